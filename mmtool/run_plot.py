"""A run's curves as a PNG: training loss, learning rate and the val figures from metrics.jsonl, one run or several
overlaid. matplotlib is optional (`pip install mmtool[plot]`); without it nothing is drawn."""
import importlib.util
import json
from pathlib import Path

from mmtool.errors import MmtoolError

# The val figures worth a curve, whichever stage wrote the run (CLIP retrieval and zero-shot; answer loss).
VAL_KEYS = ("image_to_text_R@1", "text_to_image_R@1", "zero_shot_group_acc", "answer_loss")
LINESTYLES = ("-", "--", ":", "-.")


def read_curves(run: Path) -> dict[str, dict[int, dict]]:
    """split -> step -> record. A resumed run logs some steps again; the later record of a step wins."""
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise MmtoolError(f"{run}: no metrics.jsonl (not a training run folder)")
    curves: dict[str, dict[int, dict]] = {}
    for number, line in enumerate(metrics.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise MmtoolError(f"{metrics}:{number}: not a JSON record") from None
        curves.setdefault(record.get("split", "train"), {})[int(record["step"])] = record
    return curves


def series(curve: dict[int, dict], key: str) -> tuple[list[int], list[float]]:
    steps = sorted(step for step, record in curve.items() if isinstance(record.get(key), (int, float)))
    return steps, [float(curve[step][key]) for step in steps]


def run_labels(runs: list[Path]) -> list[str]:
    """The fewest trailing path parts that tell the runs apart (e1/llava and e2/llava, not llava twice)."""
    parts = [run.resolve().parts for run in runs]
    for depth in range(1, max(map(len, parts)) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(run) for run in runs]


def plot_runs(runs: list[Path], out: Path) -> Path:
    """Draw train loss, lr and the val figures of `runs` (a colour each) into `out`."""
    try:
        import matplotlib
    except ImportError:
        raise MmtoolError("plotting needs matplotlib: pip install 'mmtool[plot]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, (loss_axes, lr_axes, val_axes) = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    labels = run_labels(runs)
    for index, (run, name) in enumerate(zip(runs, labels)):
        curves, colour = read_curves(run), f"C{index}"
        label = name if len(runs) > 1 else None
        train, val = curves.get("train", {}), curves.get("val", {})
        loss_axes.plot(*series(train, "loss"), color=colour, label=label)
        lr_axes.plot(*series(train, "lr"), color=colour, label=label)
        shown = [key for key in VAL_KEYS if series(val, key)[0]]
        for key, style in zip(shown, LINESTYLES):
            val_axes.plot(*series(val, key), style, color=colour, marker=".",
                          label=f"{name}: {key}" if len(runs) > 1 else key)
    for axes, title in ((loss_axes, "train loss"), (lr_axes, "learning rate"), (val_axes, "val")):
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small")
    figure.suptitle(" vs ".join(labels) if len(runs) > 1 else str(runs[0]))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def plot_run_if_possible(run: Path) -> Path | None:
    """At the end of training: RUN/plot.png, or None where matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        return None
    return plot_runs([run], run / "plot.png")
