"""The export and image-search commands of `mmtool` (registered on the main app by mmtool/cli.py)."""
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mmtool.cli_options import EXPORT, SEARCH, JsonSwitch, PrecisionOption, one_of, required
from mmtool.errors import MmtoolError

FormatOption = Annotated[str, typer.Option("--format", help="hf | onnx | safetensors")]
OutOption = Annotated[Path, typer.Option(help="Export folder (created; must not exist or be empty)")]
ClipOption = Annotated[Optional[Path], typer.Option("--clip", help="A stage-1 CLIP checkpoint: clip.pt or "
                                                                   "clip.safetensors")]
OldCheckpointArgument = Annotated[Optional[Path], typer.Argument(hidden=True)]  # before --clip
# The index commands embed with CLIP weights in any format; by default the index's own.
IndexClipOption = Annotated[Optional[str], typer.Option("--clip", help="CLIP weights: clip.pt / clip.safetensors, "
                                                                       "or an onnx / safetensors export folder")]
OldModelOption = Annotated[Optional[str], typer.Option("--model", hidden=True)]  # before --clip
PushOption = Annotated[Optional[str], typer.Option("--push-to-hub", help="Then upload the folder (model card "
                                                                         "included) to this Hugging Face model "
                                                                         "repo, e.g. me/emoji-clip (needs a token)")]


def push_if_asked(out: Path, repo: str | None) -> None:
    if repo:
        from mmtool.export.model_card import push_to_hub

        print(f"pushed {out} to {push_to_hub(out, repo)}")


def export_vision(out: OutOption, clip: ClipOption = None, fmt: FormatOption = "hf", push_to_hub: PushOption = None,
                  checkpoint: OldCheckpointArgument = None):
    """Export the image encoder (tower + projection) as hf, onnx or safetensors.

    hf = CLIPVisionModelWithProjection + image processor (ViT towers); onnx = vision.onnx (dynamic batch);
    safetensors = weights + config.json (any tower)."""
    from mmtool.export.run import export

    export(required(one_of(clip, checkpoint, "--clip"), "--clip"), "vision", fmt, out)
    print(f"wrote {out} (model card: README.md)")
    push_if_asked(out, push_to_hub)


def export_clip(out: OutOption, clip: ClipOption = None, fmt: FormatOption = "hf", push_to_hub: PushOption = None,
                checkpoint: OldCheckpointArgument = None):
    """Export both encoders as hf, onnx or safetensors.

    hf = CLIPModel + tokenizer (same ids as mmtool's) + image processor; onnx = vision.onnx + text.onnx + tokenizer;
    safetensors = weights + config.json + tokenizer (any towers)."""
    from mmtool.export.run import export

    export(required(one_of(clip, checkpoint, "--clip"), "--clip"), "clip", fmt, out)
    print(f"wrote {out} (model card: README.md)")
    push_if_asked(out, push_to_hub)


index_app = typer.Typer(help="Build and grow image-search indexes (FAISS + metadata + thumbnails).",
                        no_args_is_help=True)
SourceArgument = Annotated[str, typer.Argument(help="A folder of images, a .jsonl list ({\"image\": path, "
                                                    "\"caption\"?: text, ...}) or webdataset shards")]
BatchOption = Annotated[int, typer.Option(help="Images embedded per forward pass")]
SaveEveryOption = Annotated[int, typer.Option(help="Save the index every N new images: an interruption loses "
                                                        "at most N (rerun to continue)")]


def report_embedding(report) -> None:
    from mmtool.data.reading.skips import skip_summary

    for path, reason in report.unreadable:
        print(f"skipped unreadable image: {path} ({reason})", file=sys.stderr)
    print(json.dumps({k: v for k, v in report.as_dict().items() if k != "unreadable_paths"}))
    print(skip_summary(report.skipped(), report.added + sum(report.skipped().values())), file=sys.stderr)


@index_app.command("build")
def index_build(
    source: SourceArgument,
    out: Annotated[Path, typer.Option(help="Index folder to create")],
    clip: IndexClipOption = None,
    index_type: Annotated[str, typer.Option(help="flat (exact inner product) | hnsw (approximate, large sets)")]
    = "flat",
    batch_size: BatchOption = 64,
    save_every: SaveEveryOption = 1000,
    model: OldModelOption = None,
):
    """Embed every image of SOURCE and write a searchable index."""
    from mmtool.index import ImageIndex

    model = required(one_of(clip, model, "--clip"), "--clip")

    _, report = ImageIndex.build(source, model, out, index_type=index_type, batch_size=batch_size,
                                 save_every=save_every)
    report_embedding(report)


@index_app.command("add")
def index_add(
    index: Annotated[Path, typer.Argument(help="An index folder from `mmtool index build`")],
    source: SourceArgument,
    clip: Annotated[Optional[str], typer.Option("--clip", help="The index's CLIP weights in any format (default: "
                                                               "the ones it was built with)")] = None,
    batch_size: BatchOption = 64,
    save_every: SaveEveryOption = 1000,
    model: OldModelOption = None,
):
    """Append new images (indexed ones are not re-embedded; identical files are skipped). Saves as it goes: rerun
    after an interruption and it continues."""
    from mmtool.index import ImageIndex

    report_embedding(ImageIndex.open(index).add(source, one_of(clip, model, "--clip"), batch_size=batch_size,
                                                save_every=save_every))


def search(
    index: Annotated[Path, typer.Argument(help="An index folder from `mmtool index build`")],
    text: Annotated[Optional[str], typer.Option(help="Find images matching this text")] = None,
    image: Annotated[Optional[Path], typer.Option(help="Find images like this one")] = None,
    k: Annotated[int, typer.Option("-k", help="How many results")] = 10,
    clip: Annotated[Optional[str], typer.Option("--clip", help="Embed the query with these CLIP weights (the "
                                                               "index's, in any format)")] = None,
    as_json: JsonSwitch = False,
    model: OldModelOption = None,
):
    """Ranked images for a text or an image query, with cosine scores."""
    from mmtool.index import ImageIndex

    hits = ImageIndex.open(index, one_of(clip, model, "--clip")).search(text=text, image=image, k=k)
    if as_json:
        print(json.dumps([hit.as_dict() for hit in hits], indent=2, ensure_ascii=False))
        return
    print(f"{'rank':>4}  {'score':>7}  path  (caption)")
    for hit in hits:
        print(f"{hit.rank:>4}  {hit.score:7.4f}  {hit.path}" + (f"  ({hit.caption})" if hit.caption else ""))


def serve(
    index: Annotated[Path, typer.Argument(help="An index folder from `mmtool index build`")],
    port: Annotated[int, typer.Option(help="TCP port (0: any free one)")] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on; the default keeps it on this machine")]
    = "127.0.0.1",
    clip: Annotated[Optional[str], typer.Option("--clip", help="Embed queries with these CLIP weights (the "
                                                               "index's, in any format)")] = None,
    model: OldModelOption = None,
    token: Annotated[Optional[str], typer.Option(envvar="MMTOOL_SERVE_TOKEN", help="Answer only requests carrying "
                                                 "this token (open /?token=TOKEN once; API: Authorization: Bearer)")]
    = None,
):
    """A local search page: text box, thumbnail grid, image upload for image->image search."""
    from mmtool.index import ImageIndex
    from mmtool.index import server as index_server

    index = ImageIndex.open(index, one_of(clip, model, "--clip"))
    index.encoder  # load the model before the first request
    if not index_server.is_loopback(host) and token is None:
        print(f"warning: --host {host} is reachable from other machines and no --token is set: anyone who can "
              f"reach it can search the index and see its thumbnails", file=sys.stderr)
    try:
        server = index_server.make_server(index, host, port, token=token)
    except OSError as err:
        raise MmtoolError(f"--host {host} --port {port}: cannot listen ({err.strerror})") from None
    address = f"http://{server.server_address[0]}:{server.server_address[1]}/" + (f"?token={token}" if token else "")
    print(f"serving {len(index.items)} images on {address} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def ask(
    index: Annotated[Path, typer.Argument(help="An index folder from `mmtool index build`")],
    question: Annotated[str, typer.Argument(help="Finds the best image for it, then answers it about that image")],
    model: Annotated[Path, typer.Option(help="A stage-2/3 model: vlm.pt or its run folder")],
    k: Annotated[int, typer.Option("-k", help="Also list the next best images (the answer uses the first)")] = 1,
    llm: Annotated[Optional[str], typer.Option(help="Load the LLM from here instead of the recorded --llm")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Answer length limit in tokens")] = 64,
    temperature: Annotated[float, typer.Option(help="0 = greedy decoding")] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (answer, image used, candidates)")] = False,
    precision: PrecisionOption = "bf16",
):
    """Multimodal RAG: retrieve the image that best matches the question, answer about it (streamed), cite it."""
    from mmtool.index import ImageIndex
    from mmtool.index.ask import ask as answer_from_index
    from stage3_llm.checkpoint import load_for_answering

    image_index = ImageIndex.open(index)
    if not model.exists():
        raise MmtoolError(f"--model {model}: not found")
    bundle = load_for_answering(model, llm, precision)
    stream = None if as_json else (lambda text: print(text, end="", flush=True))
    result = answer_from_index(image_index, bundle, question, k, max_new_tokens, temperature, on_text=stream)
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    used = result["image"]
    print(f"\nimage: {used['path']}" + (f"  ({used['caption']})" if used["caption"] else "")
          + f"  score {used['score']:.4f}" + ("  [thumbnail]" if used["image_source"] == "thumbnail" else ""))
    for hit in result["candidates"][1:]:
        print(f"  {hit['rank']:>3}  {hit['score']:7.4f}  {hit['path']}" + (f"  ({hit['caption']})" if hit["caption"]
                                                                               else ""))


def add_retrieval_commands(app: typer.Typer) -> None:
    app.command("export-vision", rich_help_panel=EXPORT)(export_vision)
    app.command("export-clip", rich_help_panel=EXPORT)(export_clip)
    app.add_typer(index_app, name="index", rich_help_panel=SEARCH)
    app.command("search", rich_help_panel=SEARCH)(search)
    app.command("serve", rich_help_panel=SEARCH)(serve)
    app.command("ask", rich_help_panel=SEARCH)(ask)
