"""The `mmtool` command line: one Typer app chaining the stages."""
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mmtool.cli_options import (PIPELINE, RUNS, STAGE1, STAGE2, STAGE3, EXPORT, OldJsonPath, OutJsonOption,
                                PipelineSetOption, PrecisionOption, PrintConfigOption, SetOption, WorkflowGroup,
                                config_option, load_or_print, one_of, quiet_deepspeed, required, version)
from mmtool.data_cli import add_data_commands, print_skips
from mmtool.errors import MmtoolError
from mmtool.retrieval_cli import ClipOption, OldCheckpointArgument, PushOption, add_retrieval_commands, push_if_asked

app = typer.Typer(help="mmtool: image-caption shards -> CLIP -> LLaVA-style multimodal LLM.", cls=WorkflowGroup,
                  no_args_is_help=True, pretty_exceptions_enable=False)
add_data_commands(app)
add_retrieval_commands(app)

ModelOption = Annotated[Optional[Path], typer.Option("--model", help="A stage-2/3 model: vlm.pt or its run folder")]
ResumeOption = Annotated[bool, typer.Option(help="Continue from the latest training state in --out")]
OverwriteOption = Annotated[bool, typer.Option(help="Start over in an --out that holds another run: its files are "
                                                    "removed first (the folder's other files are kept)")]


def show_version(asked: bool) -> None:
    if asked:
        print(f"mmtool {version()}")
        raise typer.Exit()


@app.callback()
def main_options(_: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True,
                                                 help="Print mmtool's version and exit")] = False):
    """mmtool: image-caption shards -> CLIP -> LLaVA-style multimodal LLM."""


@app.command("pretrain-clip", rich_help_panel=STAGE1)
def pretrain_clip(
    config: Annotated[str, config_option("clip", "CLIP recipe")] = "tiny_vit",
    overrides: SetOption = None,
    print_config: PrintConfigOption = False,
    out: Annotated[Path, typer.Option(help="Output folder: clip.pt, metrics, training states")] = Path("ckpt/clip"),
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
):
    """Pretrain CLIP (or SigLIP) towers with DeepSpeed; evaluate on the val split; write OUT/clip.pt."""
    from mmtool import distributed
    from mmtool.train_state import claim_out
    from stage1_clip.config import ClipConfig
    from stage1_clip.train import pretrain_clip as run

    cfg = load_or_print(ClipConfig, config, overrides, "clip", print_config)
    claim_out(out, resume, overwrite)
    run(cfg, out, resume=resume)
    distributed.exit_cleanly()


@app.command("eval-clip", rich_help_panel=STAGE1)
def eval_clip(
    data: Annotated[str, typer.Option(help="Shards to evaluate on (glob, brace list or file)")],
    clip: ClipOption = None,
    json_out: OutJsonOption = None,
    checkpoint: OldCheckpointArgument = None,
    old_json: OldJsonPath = None,
    style_views: Annotated[Optional[str], typer.Option(
        help="Embed each image as the mean over these renderings, e.g. plain,grayscale,outline,contour,stroke; "
             "'plain' for the crop alone [default: the checkpoint's eval.style_views]")] = None,
):
    """Image<->text retrieval recall and zero-shot accuracy of a CLIP checkpoint."""
    from mmtool.data.reading.loader import make_eval_set, resolve_shards
    from stage1_clip.checkpoint import load_clip
    from stage1_clip.evaluate import evaluate_clip
    from stage1_clip.style_views import check_views, effective_views

    json_out = one_of(json_out, old_json, "--out-json")
    bundle = load_clip(required(one_of(clip, checkpoint, "--clip"), "--clip"))
    cfg = bundle.config
    views = cfg.eval.style_views if style_views is None else [view.strip() for view in style_views.split(",")]
    try:
        check_views(views)
    except ValueError as err:
        raise MmtoolError(f"--style-views: {err}") from None
    views = effective_views(views)
    eval_set = make_eval_set(resolve_shards(data), cfg.model.vision.image_size, cfg.data.label_fields,
                             as_crops=bool(views))
    metrics = evaluate_clip(bundle.model.inference_copy(), bundle.tokenize, eval_set, cfg.eval.templates,
                            cfg.eval.batch_size, show_progress=True, style_views=views)
    metrics["style_views"] = ",".join(views or ["plain"])
    print_table(metrics)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(metrics, indent=2))
    print_skips(eval_set["skipped"], len(eval_set["caption"]))


@app.command("align", rich_help_panel=STAGE2)
def align(
    clip: Annotated[Optional[Path], typer.Option("--clip", help="Stage-1 checkpoint (clip.pt) whose image tower "
                                                               "is used")] = None,
    llm: Annotated[Optional[str], typer.Option(help="LLM: HF folder, .gguf file, alias (llama) or hub id")] = None,
    config: Annotated[str, config_option("align", "Stage-2 recipe")] = "emoji",
    overrides: SetOption = None,
    print_config: PrintConfigOption = False,
    out: Annotated[Path, typer.Option(help="Output folder: vlm.pt, metrics, training states")] = Path("ckpt/align"),
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
    vision: Annotated[Optional[Path], typer.Option("--vision", hidden=True)] = None,  # before --clip
):
    """Stage 2: train a projector from a frozen stage-1 image tower into a frozen LLM; write OUT/vlm.pt."""
    from mmtool import distributed
    from mmtool.train_state import claim_out
    from stage2_projector.config import AlignConfig
    from stage2_projector.train import align as run

    clip = one_of(clip, vision, "--clip")
    sets = list(overrides or [])
    sets += [f"model.vision={clip}"] if clip else []
    sets += [f"model.llm={llm}"] if llm else []
    cfg = load_or_print(AlignConfig, config, sets, "align", print_config)
    claim_out(out, resume, overwrite)
    run(cfg, out, resume=resume)
    distributed.exit_cleanly()


@app.command("finetune", rich_help_panel=STAGE3)
def finetune(
    model: Annotated[Optional[Path], typer.Option(help="The stage-2 (or stage-3) model to tune: vlm.pt or its run "
                                                       "folder")] = None,
    data: Annotated[Optional[str], typer.Option(help="LLaVA conversation JSON / JSONL to train on")] = None,
    clip: Annotated[Optional[Path], typer.Option("--clip", help="Single stage: a stage-1 clip.pt to start from with a "
                                                               "fresh projector, instead of a stage-2 --model")]
    = None,
    config: Annotated[str, config_option("finetune", "Stage-3 recipe")] = "emoji",
    overrides: SetOption = None,
    print_config: PrintConfigOption = False,
    out: Annotated[Path, typer.Option(help="Output folder: vlm.pt, adapter/, metrics, training states")]
    = Path("ckpt/llava"),
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
):
    """Stage 3: instruction-tune an aligned model (LoRA + projector by default); write OUT/vlm.pt and OUT/adapter/."""
    from mmtool import distributed
    from mmtool.train_state import claim_out
    from stage3_llm.config import FinetuneConfig
    from stage3_llm.train import finetune as run

    sets = list(overrides or [])
    if model and clip:
        raise typer.BadParameter("give --model (two stages) or --clip (single stage), not both")
    sets += [f"model.base={model}"] if model else []
    sets += [f"model.vision={clip}", "model.base=null"] if clip else []
    sets += [f"data.train={data}"] if data else []
    cfg = load_or_print(FinetuneConfig, config, sets, "finetune", print_config)
    claim_out(out, resume, overwrite)
    run(cfg, out, resume=resume)
    distributed.exit_cleanly()


@app.command("eval-llava", rich_help_panel=STAGE3)
def eval_llava(
    model: Annotated[Path, typer.Option(help="A stage-3 (or stage-2) model: vlm.pt or its run folder")],
    data: Annotated[Path, typer.Option(help="Held-out LLaVA conversations, e.g. data/instruct/val.json")],
    per_task: Annotated[int, typer.Option(help="Conversations per task, a seeded choice (0 = all)")] = 300,
    seed: Annotated[int, typer.Option(help="Seed of the per-task choice and of the shuffled images")] = 0,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N conversations of the file")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Answer length limit in tokens")] = 32,
    batch_size: Annotated[int, typer.Option(help="Questions answered together (greedy, left-padded)")] = 16,
    image_folder: Annotated[Optional[Path], typer.Option(help="Image paths are relative to this folder")] = None,
    blind: Annotated[str, typer.Option(help="Blind copies: answer also with a blank image, a shuffled one "
                                            "(another conversation's), both, or none")] = "blank,shuffled",
    tower: Annotated[bool, typer.Option(help="Also score the stage-1 CLIP tower alone")] = True,
    clip: Annotated[Optional[Path], typer.Option("--clip", help="The stage-1 clip.pt for the tower baseline, "
                                                               "instead of the path in the model's record")] = None,
    any_clip: Annotated[bool, typer.Option("--any-clip", help="Accept a --clip file whose sha256 differs from the "
                                                              "record")] = False,
    tag_set_names: Annotated[bool, typer.Option(help="Add the file's own names and groups (the tower baseline's "
                                                      "candidates) to the model's tag vocabulary, so a concept "
                                                      "never trained on can be tagged")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--out-json", help="Also write scores and answers here (JSON)")]
    = None,
    precision: PrecisionOption = "bf16",
    vision: Annotated[Optional[Path], typer.Option("--vision", hidden=True)] = None,  # before --clip
    any_vision: Annotated[bool, typer.Option("--any-vision", hidden=True)] = False,  # before --any-clip
    old_json: OldJsonPath = None,
):
    """Per-task answer accuracy beside its baselines: majority answer, blind copies and the CLIP tower alone.

    Exact and contains accuracy with 95% CIs; the blind copies answer with a blank and with a shuffled image."""
    from stage3_llm.blind import parse_blind
    from stage3_llm.eval_run import EvalOptions, run_eval

    json_out = one_of(json_out, old_json, "--out-json")
    options = EvalOptions(per_task=per_task or None, seed=seed, limit=limit, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, blind=parse_blind(blind), tower=tower,
                          vision=one_of(clip, vision, "--clip"), any_vision=any_clip or any_vision,
                          precision=precision, tag_set_names=tag_set_names)
    report = run_eval(model, data, image_folder, options)
    print(report["table"])
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report["json"], indent=2, ensure_ascii=False))


@app.command("chat", rich_help_panel=STAGE3)
def chat(
    question: Annotated[str, typer.Argument(help="What to ask about the image")],
    model: Annotated[Path, typer.Option(help="A stage-2/3 model: vlm.pt or its run folder")],
    image: Annotated[Path, typer.Option(help="Image file (PNG, JPEG, ...)")],
    llm: Annotated[Optional[str], typer.Option(help="Load the LLM from here instead of the recorded --llm")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Answer length limit in tokens")] = 64,
    temperature: Annotated[float, typer.Option(help="0 = greedy decoding")] = 0.0,
    precision: PrecisionOption = "bf16",
    tag_names: Annotated[Optional[Path], typer.Option(help="A text file of names, one per line, added to the model's "
                                                           "tag vocabulary (embedded by its CLIP tower), so the tags "
                                                           "can name concepts it never trained on")] = None,
):
    """Answer a question about an image, streaming the answer."""
    from mmtool.data.reading.images import BadSample, load_image
    from stage3_llm.checkpoint import load_for_answering
    from stage3_llm.generate import generate
    from mmtool.checkpoint import load_model
    from stage2_projector.checkpoint import KIND, resolve_model_file
    from stage3_llm.tower import extended_tags, load_tower, read_names, require_tower_tags

    if not image.is_file():
        raise MmtoolError(f"--image {image}: file not found")
    try:
        load_image(image.read_bytes())  # refused before the model loads
    except BadSample as err:
        raise MmtoolError(f"--image {image}: {err}") from None
    names = read_names(tag_names) if tag_names else []  # refused before the model loads
    if names:
        require_tower_tags(load_model(resolve_model_file(model), KIND)["config"], model, "--tag-names")
    bundle = load_for_answering(model, llm, precision)
    if names:
        clip = load_tower(bundle.record, str(model), None, any_vision=False)
        bundle.model.tower_tags = extended_tags(bundle.model.tower_tags, clip, names, [], {})
    generate(bundle.model, bundle.tokenizer, bundle.preprocess(image.read_bytes()), question,
             bundle.num_image_tokens, max_new_tokens, temperature,
             on_text=lambda text: print(text, end="", flush=True))
    print()


@app.command("export-llava", rich_help_panel=EXPORT)
def export_llava(
    model: Annotated[Path, typer.Option(help="A stage-2/3 model: vlm.pt (LoRA is merged) or its run folder")],
    out: Annotated[Path, typer.Option(help="Folder for the Hugging Face LLaVA model")],
    llm: Annotated[Optional[str], typer.Option(help="Load the LLM from here instead of the recorded --llm")] = None,
    push_to_hub: PushOption = None,
):
    """Write a transformers LlavaForConditionalGeneration folder (LoRA merged; tokenizer, processor, template) with
    its model card (README.md)."""
    from mmtool.export.llava import export_llava_folder

    folder, card = export_llava_folder(model, out, llm)
    print(f"wrote {folder}")
    print(f"wrote {card}")
    push_if_asked(out, push_to_hub)


@app.command("pipeline", rich_help_panel=PIPELINE)
def pipeline(
    config: Annotated[Optional[str], config_option("pipeline", "Pipeline")] = None,
    overrides: PipelineSetOption = None,
    print_config: PrintConfigOption = False,
    force: Annotated[bool, typer.Option(help="Re-run every step, even those that are up to date")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the steps and whether each is up to date; run nothing")]
    = False,
    until: Annotated[Optional[str], typer.Option(help="Stop after this step (its name in the summary, e.g. "
                                                      "pretrain-clip); the later steps are left as they are")] = None,
    config_argument: Annotated[Optional[str], typer.Argument(hidden=True)] = None,  # before --config
):
    """Stage 1 -> stage 2 -> stage 3 -> exports -> evaluations, skipping steps whose outputs are up to date."""
    from mmtool.pipeline import PipelineConfig, format_summary, plan, run_pipeline, steps_until

    config = one_of(config, config_argument, "--config") or "emoji"
    cfg = load_or_print(PipelineConfig, config, overrides, "pipeline", print_config)
    steps = steps_until(plan(cfg), until)
    runner = (lambda args: print(f"would run: mmtool {' '.join(args)}")) if dry_run else None
    rows = run_pipeline(steps, Path(cfg.out) / "stamps", force=force, runner=runner, record=not dry_run)
    print("\n" + format_summary(rows))


@app.command("clip-folds", rich_help_panel=STAGE1)
def clip_folds(
    config: Annotated[str, config_option("clip", "CLIP recipe")],
    out: Annotated[Path, typer.Option(help="Folder for one run per fold, the stamps and folds.json")],
    styles: Annotated[str, typer.Option(help="Held-out styles, one fold each: comma list or all")] = "all",
    seeds: Annotated[Optional[str], typer.Option(help="Seeds to train on --seed-fold for the spread, e.g. 0,1,2")]
    = None,
    seed_fold: Annotated[str, typer.Option(help="The fold the extra seeds run on")] = "twemoji",
    overrides: SetOption = None,
    print_config: PrintConfigOption = False,
    shards: Annotated[Path, typer.Option(help="Fold shards: <style>/ is built once and shared by every recipe")]
    = Path("data/folds"),
    baseline: Annotated[Optional[Path], typer.Option(help="Another recipe's folds.json (e.g. the linear probe) to "
                                                          "show beside every fold")] = None,
    existing_shards: Annotated[bool, typer.Option(hidden=True, help="Use SHARDS/<style>/ as they are")] = False,
):
    """Leave-one-style-out folds: train the recipe per fold, score it on the style it never saw.

    Reports each fold, the mean, the worst fold and the seed-to-seed spread (OUT/folds.json). Finished folds are
    skipped."""
    from mmtool import recipes
    from mmtool.clip_folds import FoldsSpec, parse_seeds, run_folds
    from mmtool.data.building.emoji_styles import parse_styles
    from mmtool.fold_report import format_report
    from stage1_clip.config import ClipConfig

    load_or_print(ClipConfig, config, overrides, "clip", print_config)
    spec = FoldsSpec(recipes.find_config(config, "clip"), out, parse_styles(styles, None),
                     parse_seeds(seeds) if seeds else [], seed_fold, list(overrides or []), shards,
                     build_shards=not existing_shards, baseline=baseline)
    print("\n" + format_report(run_folds(spec)))


@app.command("plot", rich_help_panel=RUNS)
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Training run folders (each holding metrics.jsonl)")],
    out: Annotated[Optional[Path], typer.Option(help="PNG to write (default: RUN/plot.png for one run, plot.png "
                                                     "here for several)")] = None,
):
    """Train loss, learning rate and val curves of one run, or of several overlaid (needs matplotlib)."""
    from mmtool.run_plot import plot_runs

    default = runs[0] / "plot.png" if len(runs) == 1 else Path("plot.png")
    print(f"wrote {plot_runs(runs, out or default)}")


def print_table(metrics: dict) -> None:
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")


def main() -> None:
    # The deepspeed launcher appends --local_rank=N; LOCAL_RANK in the environment already says it.
    sys.argv = [a for a in sys.argv if not re.fullmatch(r"--local[_-]rank(=\d+)?", a)]
    quiet_deepspeed()
    try:
        app()
    except MmtoolError as err:
        print(f"mmtool: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
