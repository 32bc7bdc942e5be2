"""`mmtool clip-folds`: a CLIP recipe judged on every drawing style it never saw (leave one style out).

For each style, the shards with that style held out are built once under data/folds/<style>/ (shared by every
recipe: one fold's are rendered, the others regroup its samples without rendering again), the recipe trains on
the other styles, and `mmtool eval-clip` scores it on the held-out style's drawings of training concepts
(heldout_train) and of new concepts (heldout_val). Extra seeds on one fold measure how far a
figure moves by chance alone. The steps go through the pipeline's runner: an interrupted run continues where it
stopped and finished folds are skipped.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

from mmtool.data.building.emoji_styles import STYLES
from mmtool.errors import MmtoolError
from mmtool.feature_cache import FOLDER
from mmtool.fold_report import SPLITS, baseline_of, eval_json, mean_and_worst, read_scores, spread
from mmtool.pipeline import Step, _sets, run_pipeline


@dataclass
class FoldsSpec:
    config: Path
    out: Path
    styles: list[str] = field(default_factory=lambda: list(STYLES))  # the folds: one per held-out style
    seeds: list[int] = field(default_factory=list)  # seeds run on seed_fold; empty: no spread
    seed_fold: str = "twemoji"
    sets: list[str] = field(default_factory=list)  # --set overrides for every training run
    shards: Path = Path("data/folds")  # <style>/ holds the shards with that style held out
    build_shards: bool = True  # False: shards/<style>/ already exist (built another way, e.g. by a test)
    baseline: Path | None = None  # another recipe's folds.json, shown beside this one's figures
    # The fold whose shards are rendered; every other fold's regroup its samples
    # (mmtool/data/building/emoji_regroup.py).
    rendered_fold: str = "twemoji"


def parse_seeds(spec: str) -> list[int]:
    try:
        seeds = list(dict.fromkeys(int(seed) for seed in spec.split(",")))
    except ValueError:
        raise MmtoolError(f"--seeds: expected comma-separated integers, got '{spec}'") from None
    if len(seeds) < 2:
        raise MmtoolError(f"--seeds {spec}: a spread needs at least two different seeds")
    return seeds


def config_seed(spec: FoldsSpec) -> int:
    """The seed every fold trains with (the recipe's own): the seed fold's run with it is that fold's run."""
    from mmtool.config import load_config
    from stage1_clip.config import ClipConfig

    return load_config(ClipConfig, spec.config, spec.sets).train.seed


def seed_runs(spec: FoldsSpec) -> dict[int, Path]:
    """{seed: run folder} of the seed fold; the recipe's own seed is the fold's run, not a second one."""
    own = config_seed(spec)
    return {seed: spec.out / (spec.seed_fold if seed == own else f"{spec.seed_fold}-seed{seed}")
            for seed in spec.seeds}


def plan_folds(spec: FoldsSpec) -> list[Step]:
    """Fold by fold (shards, training, the two evaluations), then the seed fold's extra seeds."""
    if spec.seeds and spec.seed_fold not in spec.styles:
        raise MmtoolError(f"--seed-fold {spec.seed_fold} is not among --styles {','.join(spec.styles)}")
    steps = _shard_steps(spec)
    for style in spec.styles:
        steps += _run_steps(spec, style, style, spec.out / style, [])
    for seed, run in seed_runs(spec).items():
        if run != spec.out / spec.seed_fold:
            steps += _run_steps(spec, spec.seed_fold, f"{spec.seed_fold}:seed{seed}", run, [f"train.seed={seed}"])
    return steps


def _shard_steps(spec: FoldsSpec) -> list[Step]:
    if not spec.build_shards:
        return []
    source = spec.rendered_fold  # rendered even when not among the folds: every fold's shards have one command
    steps = [Step(f"shards:{source}", ["data", "emoji", "--out", str(spec.shards / source), "--styles", "all",
                                       "--eval-style", source],
                  [spec.shards / source / "meta.json"], stamps=spec.shards / "stamps")]
    for style in spec.styles:
        if style != source:
            steps.append(Step(f"shards:{style}", ["data", "emoji-regroup", "--from", str(spec.shards / source),
                                                  "--out", str(spec.shards / style), "--eval-style", style],
                              [spec.shards / style / "meta.json"], after=[f"shards:{source}"],
                              stamps=spec.shards / "stamps"))
    return steps


def _run_steps(spec: FoldsSpec, style: str, name: str, run: Path, seed_sets: list[str]) -> list[Step]:
    data = spec.shards / style
    # val: the trained styles' new concepts, so nothing of the held-out style is seen before it is scored.
    sets = [f"data.train={data}/train-*.tar", f"data.val={data}/val-*.tar", *spec.sets, *seed_sets]
    train = Step(f"pretrain-clip:{name}", ["pretrain-clip", "--config", str(spec.config), "--out", str(run),
                                           *_sets(sets)],
                 [run / "clip.pt"], [spec.config], after=[f"shards:{style}"] if spec.build_shards else [],
                 trains=True)
    evals = [Step(f"eval-clip:{name}:{split}", ["eval-clip", str(run / "clip.pt"), "--data",
                                                str(data / f"{split}-*.tar"), "--json", str(eval_json(run, split))],
                  [eval_json(run, split)], after=[train.name], metrics=eval_json(run, split))
             for split in SPLITS]
    return [train, *evals]


def share_feature_cache(spec: FoldsSpec) -> None:
    """Every fold's feature cache (beside its train shards) is the rendered fold's, through a symlink.

    A cached view is keyed by its exact pixels (stage1_clip/feature_cache.py) and drawn from (seed, view, sample
    key), the same in every fold: a Noto drawing's views in the Twemoji fold are its views in the Fluent ones, so
    about three quarters of a fold's frozen-trunk work is already done by another fold of the same recipe and seed.
    A fold folder that already has its own cache keeps it.
    """
    shared = spec.shards / spec.rendered_fold / FOLDER
    shared.mkdir(parents=True, exist_ok=True)
    for style in spec.styles:
        link = spec.shards / style / FOLDER
        if style != spec.rendered_fold and not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path("..") / spec.rendered_fold / FOLDER, target_is_directory=True)


def run_folds(spec: FoldsSpec, runner=None) -> dict:
    """Runs what is not up to date, then writes and returns OUT/folds.json."""
    for style in spec.styles:
        if not spec.build_shards and not (spec.shards / style).is_dir():
            raise MmtoolError(f"fold shards not found: {spec.shards / style}")
    baseline = baseline_of(spec.baseline, spec.styles) if spec.baseline else None  # checked before hours of runs
    if spec.build_shards:
        share_feature_cache(spec)
    run_pipeline(plan_folds(spec), spec.out / "stamps", runner=runner)
    folds = {style: read_scores(spec.out / style) for style in spec.styles}
    report = {"config": str(spec.config), "sets": spec.sets, "folds": folds, **mean_and_worst(folds)}
    if spec.seeds:
        runs = {seed: read_scores(run) for seed, run in seed_runs(spec).items()}
        report["seeds"] = {"fold": spec.seed_fold, "runs": runs, "spread": spread(runs)}
    if baseline:
        report["baseline"] = baseline
    (spec.out / "folds.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
