"""The figures of a leave-one-style-out run: per fold, their mean, the worst fold, and the seed-to-seed spread.

Each run folder holds `eval_heldout_train.json` and `eval_heldout_val.json` as `mmtool eval-clip --out-json` wrote
them; only the figures below are taken from them.
"""
import json
import statistics
from pathlib import Path

from mmtool.errors import MmtoolError

SPLITS = {"heldout_train": "training concepts", "heldout_val": "new concepts"}  # of the held-out style
METRICS = {"image_to_text_R@1": "i2t R@1", "image_to_text_R@5": "i2t R@5", "text_to_image_R@1": "t2i R@1",
           "zero_shot_group_acc": "group acc"}
# Reported when every fold has it (eval-clip writes it since 2026-11-30): the group read through its names' captions.
OPTIONAL_METRICS = {"zero_shot_group_from_names_acc": "names acc"}

Scores = dict[str, dict[str, float]]  # {split: {metric: value}}


def eval_json(run: Path, split: str) -> Path:
    return run / f"eval_{split}.json"


def read_scores(run: Path) -> Scores:
    scores = {}
    for split in SPLITS:
        path = eval_json(run, split)
        figures = json.loads(path.read_text())
        missing = [metric for metric in METRICS if metric not in figures]
        if missing:
            raise MmtoolError(f"{path}: no {missing[0]} (evaluate with group labels: data.label_fields)")
        scores[split] = {metric: figures[metric] for metric in (*METRICS, *OPTIONAL_METRICS) if metric in figures}
    return scores


def metrics_of(runs: dict[str, Scores]) -> dict[str, str]:
    """The figures every run has, with their labels: METRICS, and each optional one no run lacks."""
    present = {metric: label for metric, label in OPTIONAL_METRICS.items()
               if all(metric in scores[split] for scores in runs.values() for split in SPLITS)}
    return {**METRICS, **present}


def mean_and_worst(folds: dict[str, Scores]) -> dict:
    """The mean over the folds, and per figure the lowest fold ({"value", "fold"})."""
    metrics = metrics_of(folds)
    mean = {split: {metric: statistics.fmean(scores[split][metric] for scores in folds.values())
                    for metric in metrics} for split in SPLITS}
    worst = {}
    for split in SPLITS:
        worst[split] = {}
        for metric in metrics:
            fold = min(folds, key=lambda name: folds[name][split][metric])
            worst[split][metric] = {"value": folds[fold][split][metric], "fold": fold}
    return {"mean": mean, "worst": worst}


def baseline_of(path: Path, folds: list[str]) -> dict:
    """Another recipe's folds.json (e.g. the linear probe) on the same folds, to show beside this recipe."""
    if not path.is_file():
        raise MmtoolError(f"--baseline {path}: file not found (a folds.json written by mmtool clip-folds)")
    other = json.loads(path.read_text())
    missing = [fold for fold in folds if fold not in other.get("folds", {})]
    if missing:
        raise MmtoolError(f"--baseline {path}: has no {missing[0]} fold")
    picked = {fold: other["folds"][fold] for fold in folds}
    return {"config": other["config"], "folds": picked, **mean_and_worst(picked)}


def spread(runs: dict[int, Scores]) -> dict:
    """Per figure over seeds: mean, sample standard deviation, min and max."""
    result = {}
    for split in SPLITS:
        result[split] = {}
        for metric in metrics_of(runs):
            values = [scores[split][metric] for scores in runs.values()]
            result[split][metric] = {"mean": statistics.fmean(values), "std": statistics.stdev(values),
                                     "min": min(values), "max": max(values)}
    return result


def format_report(report: dict) -> str:
    """folds.json as tables in %: one per split with a row per fold, the mean and the worst (each followed by the
    baseline's, if any, "-" where it lacks a figure); then the spread."""
    metrics = metrics_of(report["folds"])
    lines = [f"CLIP {report['config']}, each style held out in turn; figures in %"]
    baseline = report.get("baseline")
    beside = f"  {Path(baseline['config']).stem}" if baseline else ""
    width = max(len(name) for name in [*report["folds"], "worst", beside]) + 2
    header = f"{'':<{width}}" + "".join(f"{label:>11}" for label in metrics.values())
    for split, meaning in SPLITS.items():
        lines += ["", f"held-out style, {meaning} ({split})", header]
        for fold, scores in report["folds"].items():
            lines.append(_row(fold, width, scores[split], metrics))
            lines += [_row(beside, width, baseline["folds"][fold][split], metrics)] if baseline else []
        lines.append(_row("mean", width, report["mean"][split], metrics))
        lines += [_row(beside, width, baseline["mean"][split], metrics)] if baseline else []
        worst = report["worst"][split]
        lines.append(_row("worst", width, _values(worst), metrics))
        lines += [_row(beside, width, _values(baseline["worst"][split]), metrics)] if baseline else []
        lines.append("worst fold: " + ", ".join(f"{label} {worst[m]['fold']}" for m, label in metrics.items()))
    if "seeds" in report:
        seeds = report["seeds"]
        lines += ["", f"seed spread on {seeds['fold']} (seeds {', '.join(map(str, seeds['runs']))}): "
                      "mean ± std (min-max); a difference within it is not a gain"]
        for split in SPLITS:
            for metric, label in metrics_of(seeds["runs"]).items():
                s = {key: 100 * value for key, value in seeds["spread"][split][metric].items()}
                lines.append(f"  {split:<14} {label:<10} {s['mean']:5.1f} ± {s['std']:.1f} "
                             f"({s['min']:.1f}-{s['max']:.1f})")
    return "\n".join(lines)


def _values(worst: dict) -> dict[str, float]:
    return {metric: entry["value"] for metric, entry in worst.items()}


def _row(name: str, width: int, figures: dict[str, float], metrics: dict[str, str]) -> str:
    return f"{name:<{width}}" + "".join(f"{100 * figures[metric]:>11.1f}" if metric in figures else f"{'-':>11}"
                                        for metric in metrics)
