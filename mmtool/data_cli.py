"""The dataset-building and tokenizer commands of `mmtool` (registered on the main app by mmtool/cli.py)."""
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mmtool.cli_options import DATA, one_of, required

data_app = typer.Typer(help="Build webdataset shards from real data.", no_args_is_help=True)
tokenizer_app = typer.Typer(help="Train and inspect sentencepiece tokenizers.", no_args_is_help=True)


def add_data_commands(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data", rich_help_panel=DATA)
    app.add_typer(tokenizer_app, name="tokenizer", rich_help_panel=DATA)


@data_app.command("emoji")
def data_emoji(
    out: Annotated[Path, typer.Option(help="Folder for the shards")] = Path("data/emoji"),
    limit: Annotated[Optional[int], typer.Option(help="Only the first N emoji (smoke tests)")] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of base emoji held out for val")] = 0.1,
    styles: Annotated[str, typer.Option(help="Comma list of noto, twemoji, fluent-flat, fluent-modern, "
                                             "fluent-high-contrast, or all")] = "noto",
    eval_style: Annotated[Optional[str], typer.Option(help="Keep this style out of train/val: its images go to "
                                                           "heldout_train / heldout_val")] = None,
    npm_cache: Annotated[Path, typer.Option(help="Where the npm packages with the SVGs are kept (fetched once)")]
    = Path(".cache/npm"),
):
    """Emoji in up to five drawing styles, captions from Unicode names and CLDR keywords, split by base concept."""
    from mmtool.data.building.emoji import build_emoji

    print(json.dumps(build_emoji(out, val_fraction=val_fraction, limit=limit, styles=styles, eval_style=eval_style,
                                 npm_cache=npm_cache), indent=2))


@data_app.command("emoji-regroup")
def data_emoji_regroup(
    source: Annotated[Path, typer.Option("--from", help="A folder written by mmtool data emoji")],
    out: Annotated[Path, typer.Option(help="Folder for the regrouped shards")],
    eval_style: Annotated[Optional[str], typer.Option(help="The style to hold out instead")] = None,
):
    """The shards `mmtool data emoji` would write with another style held out, from a build of the same styles,
    without rendering again (byte for byte the same)."""
    from mmtool.data.building.emoji_regroup import regroup_emoji

    print(json.dumps(regroup_emoji(source, out, eval_style), indent=2))


@data_app.command("openclipart")
def data_openclipart(
    out: Annotated[Path, typer.Option(help="Folder for the shards")] = Path("data/openclipart"),
    limit: Annotated[Optional[int], typer.Option(help="Only the first N images")] = None,
):
    """Openclipart PNGs with captions from their SVG titles, keywords and category (noisy, web-like)."""
    from mmtool.data.building.openclipart import build_openclipart

    report = build_openclipart(out, limit=limit)
    print(json.dumps(report, indent=2))
    print_skips(report["skipped"], sum(report["samples"].values()))


@data_app.command("from-jsonl")
def data_from_jsonl(
    file: Annotated[Path, typer.Argument(help='JSONL: {"image": path, "caption": text, "label"?: ...} per line')],
    out: Annotated[Path, typer.Option(help="Folder for the shards")],
):
    """Your own image-caption pairs as shards."""
    from mmtool.data.building.jsonl import build_from_jsonl

    report = build_from_jsonl(file, out)
    print(json.dumps(report, indent=2))
    print_skips(report["skipped"], sum(report["samples"].values()))


@data_app.command("instructions")
def data_instructions(
    data: Annotated[Optional[str], typer.Option(help="Emoji shards, e.g. 'data/emoji/{train,val}-*.tar'")] = None,
    out: Annotated[Path, typer.Option(help="Folder for <split>.json and images/")] = Path("data/instruct"),
    tasks: Annotated[str, typer.Option(help="Comma list of what, group, describe, yesno, multi")]
    = "what,group,describe,yesno,multi",
    seed: Annotated[int, typer.Option(help="Seed for question choice and yes/no premises")] = 0,
    shards: Annotated[Optional[str], typer.Option("--shards", hidden=True)] = None,  # before --data
    variants_per_family: Annotated[int, typer.Option(
        help="Names kept per concept family (skin-tone/gender variants of one concept); 0 = all")] = 1,
):
    """LLaVA-format instruction conversations from emoji shards' metadata, one JSON per shard split."""
    from mmtool.data.building.instructions import build_instructions

    report = build_instructions(required(one_of(data, shards, "--data"), "--data"), out, tasks=tasks, seed=seed,
                                variants_per_family=variants_per_family or None)
    print(json.dumps(report, indent=2))
    print_skips(report["skipped"], sum(split["images"] for split in report["splits"].values()))


@tokenizer_app.command("train")
def tokenizer_train(
    data: Annotated[str, typer.Option(help="Training shards (glob, brace list or file)")],
    out: Annotated[Path, typer.Option(help="Where to write the sentencepiece .model")],
    vocab_size: Annotated[int, typer.Option(help="Target vocabulary size")] = 4096,
    max_samples: Annotated[int, typer.Option(help="Captions of at most this many samples")] = 200_000,
):
    """Train a sentencepiece tokenizer on the captions of some shards."""
    from mmtool.data.reading.loader import resolve_shards
    from stage1_clip.tokenizer_setup import train_tokenizer

    tokenizer = train_tokenizer(resolve_shards(data), vocab_size, max_samples)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out)
    print(f"wrote {out} ({tokenizer.vocab_size} pieces)")


def print_skips(skipped: dict, used: int) -> None:
    """The closing line of a command that read data, on stderr (stdout may be JSON for a script)."""
    from mmtool.data.reading.skips import skip_summary

    print(skip_summary(skipped, used + sum(skipped.values())), file=sys.stderr)
