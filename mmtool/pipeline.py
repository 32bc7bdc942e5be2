"""`mmtool pipeline`: shards -> CLIP -> aligned VLM -> instruction-tuned VLM -> exports -> evaluations.

Each step is the `mmtool` command a user would type, run in its own process (so every stage starts with a clean
DeepSpeed / process-group state, exactly as when run by hand). A step is skipped when its outputs exist and its
fingerprint — its command line, the content of the config files it reads and the fingerprints of the steps it
depends on — equals the one recorded when it last finished. Changing a config therefore re-runs that stage and
everything downstream of it, and nothing else.
"""
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated

from mmtool.config import FilePath, NameOrPath, PathField
from mmtool.data.reading.worker_lifetime import die_with_parent
from mmtool.errors import MmtoolError
from mmtool.pipeline_launch import LauncherSpec, check_launcher, process_command


@dataclass
class EmojiDataSpec:
    out: FilePath = "data/emoji5"
    styles: str = "all"
    eval_style: str | None = "twemoji"


@dataclass
class StageSpec:
    """A stage's config (a file, or a bundled recipe by name), `--set` overrides for that stage only, and the
    launcher that starts its processes (mmtool/pipeline_launch.py)."""
    set: list[str] = field(default_factory=list)
    launcher: LauncherSpec = field(default_factory=LauncherSpec)


@dataclass
class ClipSpec(StageSpec):
    config: Annotated[str, PathField(only_if_exists=True, bundled="clip")] = "configs/clip/default.yaml"


@dataclass
class AlignSpec(StageSpec):
    config: Annotated[str, PathField(only_if_exists=True, bundled="align")] = "configs/align/emoji.yaml"
    llm: NameOrPath = "llama"
    # false: single stage, no align step; finetune starts from the CLIP checkpoint with a fresh projector (its
    # config's model.align settings), which learns together with LoRA.
    enabled: bool = True


@dataclass
class FinetuneSpec(StageSpec):
    config: Annotated[str, PathField(only_if_exists=True, bundled="finetune")] = "configs/finetune/emoji.yaml"


@dataclass
class EvalSpec:
    # eval-llava: conversations per task and split (a seeded choice), each answered with its image and once per
    # blind copy (a blank image, a shuffled one): generation is the slow part.
    per_task: int = 100
    max_new_tokens: int = 24
    batch_size: int = 16
    blind: str = "blank,shuffled"


@dataclass
class PipelineConfig:
    out: FilePath = "runs/pipeline"
    emoji: EmojiDataSpec = field(default_factory=EmojiDataSpec)
    clip: ClipSpec = field(default_factory=ClipSpec)
    align: AlignSpec = field(default_factory=AlignSpec)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)


@dataclass
class Step:
    name: str
    args: list[str]  # mmtool arguments
    outputs: list[Path]
    configs: list[Path] = field(default_factory=list)  # files whose content is part of the fingerprint
    after: list[str] = field(default_factory=list)  # steps whose results this one reads
    metrics: Path | None = None  # a JSON file with the figures shown in the summary
    # The command refuses to write over its output folder (the exports): a stale one that this pipeline wrote is
    # removed before the step re-runs; one it did not write (no stamp) is left for the command to refuse.
    replaces_outputs: bool = False
    # Where the step records its fingerprint when not in the run's stamps folder: outputs shared by several runs
    # (shards every recipe reads) keep their stamp beside them, so the first run to build them is the only one.
    stamps: Path | None = None
    # A training command: its --out is this pipeline's own folder. A run there that this same command started and
    # that was cut short after saving a state is continued (--resume); any other is replaced (--overwrite). The flag
    # is added when it runs, so the fingerprint stays the command the user would type.
    trains: bool = False
    launcher: LauncherSpec | None = None  # how its processes start; part of the fingerprint

    def command(self, continues: bool = False) -> list[str]:
        if not self.trains:
            return self.args
        return [*self.args, "--resume" if continues else "--overwrite"]

    def saved_state(self) -> bool:
        """Its --out holds a resumable state (DeepSpeed's `latest`, written once a state is complete)."""
        return "--out" in self.args and (Path(self.args[self.args.index("--out") + 1]) / "state" / "latest").is_file()


def plan(cfg: PipelineConfig) -> list[Step]:
    """The steps of the pipeline, in order."""
    out, data = Path(cfg.out), Path(cfg.emoji.out)
    clip, align, llava, instruct = out / "clip", out / "align", out / "llava", out / "instruct"
    shards = lambda split: str(data / f"{split}-*.tar")  # noqa: E731 - a naming shortcut, read once
    eval_splits = ["val"] + (["heldout_train", "heldout_val"] if cfg.emoji.eval_style else [])

    emoji_args = ["data", "emoji", "--out", str(data), "--styles", cfg.emoji.styles]
    emoji_args += ["--eval-style", cfg.emoji.eval_style] if cfg.emoji.eval_style else []
    steps = [Step("emoji-shards", emoji_args, [data / "meta.json"])]
    for name in ("clip", "align", "finetune"):
        check_launcher(getattr(cfg, name).launcher, name)
    steps.append(Step("pretrain-clip", ["pretrain-clip", "--config", cfg.clip.config, "--out", str(clip),
                                        *_sets(cfg.clip.set)],
                      [clip / "clip.pt"], [Path(cfg.clip.config)], ["emoji-shards"], trains=True,
                      launcher=cfg.clip.launcher))
    for split in eval_splits:
        steps.append(Step(f"eval-clip:{split}", ["eval-clip", "--clip", str(clip / "clip.pt"), "--data", shards(split),
                                                  "--out-json", str(clip / f"eval_{split}.json")],
                          [clip / f"eval_{split}.json"], after=["pretrain-clip"],
                          metrics=clip / f"eval_{split}.json"))
    # ViT towers become Hugging Face models (CLIPVisionModelWithProjection, LlavaForConditionalGeneration); other
    # towers have no transformers class and are exported as safetensors + config only.
    is_vit = clip_vision_type(cfg.clip) == "vit"
    steps.append(Step("export-vision", ["export-vision", "--clip", str(clip / "clip.pt"), "--format",
                                        "hf" if is_vit else "safetensors", "--out", str(out / "export" / "vision")],
                      [out / "export" / "vision"], after=["pretrain-clip"], replaces_outputs=True))
    if cfg.align.enabled:
        steps.append(Step("align", ["align", "--clip", str(clip / "clip.pt"), "--llm", cfg.align.llm,
                                    "--config", cfg.align.config, "--out", str(align),
                                    *_sets([f"data.train={shards('train')}", f"data.val={shards('val')}",
                                            *cfg.align.set])],
                          [align / "vlm.pt"], [Path(cfg.align.config)], ["pretrain-clip"], trains=True,
                          launcher=cfg.align.launcher))
    instruct_shards = str(data / ("{" + ",".join(["train", *eval_splits]) + "}-*.tar"))
    steps.append(Step("instructions", ["data", "instructions", "--data", instruct_shards, "--out", str(instruct)],
                      [instruct / "train.json", instruct / "val.json"], after=["emoji-shards"]))
    start = ["--model", str(align)] if cfg.align.enabled else ["--clip", str(clip / "clip.pt")]
    steps.append(Step("finetune", ["finetune", *start, "--data", str(instruct / "train.json"),
                                   "--config", cfg.finetune.config, "--out", str(llava),
                                   *_sets([f"data.val={instruct / 'val.json'}", *cfg.finetune.set])],
                      [llava / "vlm.pt"], [Path(cfg.finetune.config)],
                      ["align" if cfg.align.enabled else "pretrain-clip", "instructions"], trains=True,
                      launcher=cfg.finetune.launcher))
    for split in eval_splits:  # each with its majority, blind and tower baselines
        steps.append(Step(f"eval-llava:{split}",
                          ["eval-llava", "--model", str(llava), "--data", str(instruct / f"{split}.json"),
                           "--per-task", str(cfg.eval.per_task), "--max-new-tokens", str(cfg.eval.max_new_tokens),
                           "--batch-size", str(cfg.eval.batch_size), "--blind", cfg.eval.blind,
                           "--out-json", str(llava / f"eval_{split}.json")],
                          [llava / f"eval_{split}.json"], after=["finetune"], metrics=llava / f"eval_{split}.json"))
    if is_vit:
        steps.append(Step("export-llava", ["export-llava", "--model", str(llava), "--out",
                                           str(out / "export" / "llava")],
                          [out / "export" / "llava"], after=["finetune"], replaces_outputs=True))
    return steps


def steps_until(steps: list[Step], last: str | None) -> list[Step]:
    """The steps up to and including the one named `last` (all of them when None); the later ones are left as
    they are. An unknown name is refused in one line listing the names."""
    if last is None:
        return steps
    names = [step.name for step in steps]
    if last not in names:
        raise MmtoolError(f"--until {last}: no such step in this pipeline (its steps: {', '.join(names)})")
    return steps[:names.index(last) + 1]


def clip_vision_type(stage: ClipSpec) -> str:
    from mmtool.config import load_config
    from stage1_clip.config import ClipConfig

    return load_config(ClipConfig, stage.config, stage.set).model.vision.type


def _sets(pairs: list[str]) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def fingerprint(step: Step, upstream: dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps(step.args).encode())
    if step.launcher and step.launcher.kind != "none":  # more processes can mean another global batch
        digest.update(json.dumps([step.launcher.kind, step.launcher.args]).encode())
    for path in step.configs:
        if not path.is_file():
            raise MmtoolError(f"step {step.name}: config file not found: {path}")
        digest.update(path.read_bytes())
    for name in step.after:
        digest.update(upstream[name].encode())
    return digest.hexdigest()[:16]


def run_pipeline(steps: list[Step], stamps: Path, force: bool = False, runner=None, record: bool = True
                 ) -> list[dict]:
    """Runs the steps that are not up to date; returns one summary row per step.

    `runner(args)` runs one mmtool command (default: a subprocess); a failing step stops the pipeline with the
    steps before it kept, so a re-run continues where it stopped. record=False (a dry run) writes no stamps.
    """
    fingerprints, rerun, rows = {}, set(), []
    for step in steps:
        fingerprints[step.name] = fingerprint(step, fingerprints)
        stamp = (step.stamps or stamps) / f"{step.name.replace(':', '_')}.json"
        stamp.parent.mkdir(parents=True, exist_ok=True)
        recorded = json.loads(stamp.read_text()) if stamp.is_file() else {}
        up_to_date = (recorded.get("fingerprint") == fingerprints[step.name]
                      and all(p.exists() for p in step.outputs) and not rerun.intersection(step.after))
        if up_to_date and not force:
            rows.append({"step": step.name, "status": "up to date", "seconds": recorded.get("seconds", 0.0),
                         "result": headline(step.metrics)})
            continue
        rerun.add(step.name)  # what reads this step's outputs must be redone too
        run = runner or (lambda args, launcher=step.launcher: _run_mmtool(args, launcher))
        if not record:
            run(step.command())
            rows.append({"step": step.name, "status": "to run", "seconds": 0.0, "result": ""})
            continue
        continues = step.trains and recorded.get("started") == fingerprints[step.name] and step.saved_state()
        shown = process_command(step.launcher, step.command(continues))[1:]
        print(f"\n== {step.name}: python {' '.join(shown)}", flush=True)
        if recorded and step.replaces_outputs:
            for folder in step.outputs:
                shutil.rmtree(folder, ignore_errors=True)
        stamp.unlink(missing_ok=True)  # a step that fails half-way is never taken as done
        if step.trains:  # until it ends, the stamp names the command that started: a re-run continues it
            stamp.write_text(json.dumps({"started": fingerprints[step.name]}))
        started = time.perf_counter()
        run(step.command(continues))
        seconds = round(time.perf_counter() - started, 1)
        missing = [str(p) for p in step.outputs if not p.exists()]
        if missing:
            raise MmtoolError(f"step {step.name} finished without writing {', '.join(missing)}")
        stamp.write_text(json.dumps({"fingerprint": fingerprints[step.name], "seconds": seconds}))
        rows.append({"step": step.name, "status": "ran", "seconds": seconds, "result": headline(step.metrics)})
    return rows


def _run_mmtool(args: list[str], launcher: LauncherSpec | None = None) -> None:
    # A step dies with the pipeline: one left training after a SIGKILL of the pipeline alone would write into the
    # run folder that a re-run of the pipeline resumes in.
    done = subprocess.run(process_command(launcher, args), preexec_fn=partial(die_with_parent, os.getpid()))
    if done.returncode != 0:
        raise MmtoolError(f"`mmtool {' '.join(args)}` failed (exit {done.returncode}); fix it and re-run the "
                          "pipeline: finished steps are kept")


def headline(metrics: Path | None) -> str:
    """The figures worth a glance from a step's metrics JSON (CLIP retrieval or LLaVA answer accuracy)."""
    if metrics is None or not metrics.is_file():
        return ""
    data = json.loads(metrics.read_text())
    if "scores" in data:  # eval-llava
        return llava_headline(data["scores"])
    keys = ["image_to_text_R@1", "text_to_image_R@1", "zero_shot_group_acc", "zero_shot_group_from_names_acc"]
    return ", ".join(f"{k} {data[k]:.3f}" for k in keys if isinstance(data.get(k), float))


def llava_headline(scores: dict) -> str:
    """Overall exact / contains, then the model against its blind copy (blank, shuffled image) and its tower on
    group and yes/no questions: the comparison that tells seeing from guessing."""
    overall = scores.get("all", {})
    parts = [", ".join(f"{k} {overall[k]:.3f}" for k in ("exact_match", "contains_answer") if k in overall)]
    for task in ("group", "yesno"):
        row = scores.get(task)
        if not row:
            continue
        baselines = {"blank": row.get("blind_blank", {}).get("exact_match"),
                     "shuffled": row.get("blind_shuffled", {}).get("exact_match"),
                     "tower": (row.get("tower") or {}).get("accuracy")}
        shown = ", ".join(f"{name} {value:.3f}" for name, value in baselines.items() if value is not None)
        parts.append(f"{task} {row['exact_match']:.3f}" + (f" ({shown})" if shown else ""))
    return "; ".join(parts)


def format_summary(rows: list[dict]) -> str:
    width = max(len(row["step"]) for row in rows)
    lines = [f"{'step':<{width}}  {'status':<10}  {'seconds':>8}  result"]
    lines += [f"{row['step']:<{width}}  {row['status']:<10}  {row['seconds']:>8.1f}  {row['result']}" for row in rows]
    return "\n".join(lines)
