"""`mmtool clip-folds`: every style held out in turn, mean / worst / seed spread computed from the eval JSONs, and
finished folds skipped on a re-run."""
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from mmtool.cli import app
from mmtool.clip_folds import FoldsSpec, parse_seeds, plan_folds, run_folds
from mmtool.data.building.shard_writer import SplitWriter, write_meta
from mmtool.data.reading.sample_format import encode_sample
from mmtool.errors import MmtoolError
from mmtool.fold_report import METRICS, OPTIONAL_METRICS, SPLITS, format_report
from tests.helpers.emoji import png
from tests.stage1_clip.test_train_e2e import clean_env

ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE = [
    "model.embed_dim=32", "model.vision.image_size=16", "model.vision.patch_size=8", "model.vision.width=32",
    "model.vision.layers=1", "model.vision.heads=2", "model.text.width=32", "model.text.layers=1",
    "model.text.heads=2", "model.text.context_length=16", "tokenizer.vocab_size=128", "data.workers=0",
    "data.batch_size=8", "data.val=null", "train.max_steps=2", "train.warmup_steps=1",
    "train.deepspeed=configs/deepspeed/fp32.json",
]


def fake_mmtool(log: list, figures):
    """Stands in for the mmtool subprocesses: writes each command's outputs; eval figures from figures(run, split)."""
    def run(args):
        log.append(args)
        value = lambda option: Path(args[args.index(option) + 1])  # noqa: E731
        if args[0] == "data":  # emoji or emoji-regroup
            value("--out").mkdir(parents=True, exist_ok=True)
            (value("--out") / "meta.json").write_text("{}")
        elif args[0] == "pretrain-clip":
            value("--out").mkdir(parents=True, exist_ok=True)
            (value("--out") / "clip.pt").write_text("weights")
        elif args[0] == "eval-clip":
            split = value("--data").name.split("-")[0]
            value("--json").write_text(json.dumps(figures(Path(args[1]).parent.name, split)))
    return run


def planted(run: str, split: str) -> dict:
    """Different, known figures per run, split and metric (plus a figure the report must leave out)."""
    base = {"noto": 0.30, "twemoji": 0.10, "twemoji-seed1": 0.16, "twemoji-seed2": 0.07}[run]
    shift = 0.01 if split == "heldout_val" else 0.0
    figures = {metric: base + shift + 0.1 * i for i, metric in enumerate(METRICS)}
    figures["zero_shot_group_acc"] = 0.9 - base  # the worst fold differs by metric
    return {**figures, "samples": 12}


def test_mean_worst_and_seed_spread_come_from_the_eval_figures(tmp_path):
    spec = FoldsSpec(ROOT / "configs/clip/tiny_vit.yaml", tmp_path / "run", ["noto", "twemoji"], [0, 1, 2],
                     "twemoji", shards=tmp_path / "folds")
    report = run_folds(spec, runner=fake_mmtool([], planted))
    assert json.loads((tmp_path / "run" / "folds.json").read_text()) == json.loads(json.dumps(report))
    for split in SPLITS:
        for metric in METRICS:
            per_fold = {fold: planted(fold, split)[metric] for fold in ("noto", "twemoji")}
            assert {fold: report["folds"][fold][split][metric] for fold in per_fold} == per_fold
            assert report["mean"][split][metric] == pytest.approx(statistics.fmean(per_fold.values()))
            worst = min(per_fold, key=per_fold.get)
            assert report["worst"][split][metric] == {"value": per_fold[worst], "fold": worst}
            seeds = [planted(run, split)[metric] for run in ("twemoji", "twemoji-seed1", "twemoji-seed2")]
            assert report["seeds"]["spread"][split][metric] == pytest.approx(
                {"mean": statistics.fmean(seeds), "std": statistics.stdev(seeds), "min": min(seeds),
                 "max": max(seeds)})
    assert report["worst"]["heldout_train"]["image_to_text_R@1"]["fold"] == "twemoji"
    assert report["worst"]["heldout_train"]["zero_shot_group_acc"]["fold"] == "noto"
    table = format_report(report)
    assert "mean" in table and "10.0" in table and "seed spread on twemoji" in table


def test_finished_folds_are_skipped_and_shards_are_built_once_for_every_recipe(tmp_path):
    folds, log = tmp_path / "folds", []
    spec = FoldsSpec(ROOT / "configs/clip/tiny_vit.yaml", tmp_path / "a", ["noto", "twemoji"], shards=folds)
    run_folds(spec, runner=fake_mmtool(log, planted))
    # twemoji, the seed fold, is rendered; noto's shards regroup its samples
    assert [args[:2] for args in log[:2]] == [["data", "emoji"], ["data", "emoji-regroup"]]
    assert log[1][log[1].index("--from") + 1] == str(folds / "twemoji")
    assert [args[0] for args in log[2:]] == ["pretrain-clip", "eval-clip", "eval-clip"] * 2
    assert (folds / "stamps" / "shards_noto.json").is_file()
    # one feature cache for every fold: the same view of a drawing is the same entry in each
    assert (folds / "noto" / "feature_cache").resolve() == (folds / "twemoji" / "feature_cache").resolve()

    log.clear()
    (tmp_path / "a" / "twemoji" / "clip.pt").unlink()  # an interrupted fold: only it runs again
    run_folds(spec, runner=fake_mmtool(log, planted))
    fold = tmp_path / "a" / "twemoji"
    assert [(args[0], args[args.index("--out") + 1] if args[0] == "pretrain-clip" else args[1]) for args in log] \
        == [("pretrain-clip", str(fold)), ("eval-clip", str(fold / "clip.pt")), ("eval-clip", str(fold / "clip.pt"))]

    log.clear()  # another recipe reads the same shards without building them again
    other = FoldsSpec(ROOT / "configs/clip/tiny_resnet.yaml", tmp_path / "b", ["noto"], shards=folds)
    run_folds(other, runner=fake_mmtool(log, planted))
    assert [args[0] for args in log] == ["pretrain-clip", "eval-clip", "eval-clip"]


def test_a_baseline_recipe_is_shown_beside_every_fold_on_the_same_folds(tmp_path):
    probe = FoldsSpec(ROOT / "configs/clip/linear_probe.yaml", tmp_path / "probe", ["noto", "twemoji"],
                      shards=tmp_path / "folds")
    run_folds(probe, runner=fake_mmtool([], lambda run, split: planted("twemoji-seed2", split)))
    spec = FoldsSpec(ROOT / "configs/clip/tiny_vit.yaml", tmp_path / "run", ["twemoji"], shards=tmp_path / "folds",
                     baseline=tmp_path / "probe" / "folds.json")
    report = run_folds(spec, runner=fake_mmtool([], planted))
    assert list(report["baseline"]["folds"]) == ["twemoji"]  # the baseline's other folds do not enter its mean
    assert report["baseline"]["mean"]["heldout_val"] == pytest.approx(
        {metric: planted("twemoji-seed2", "heldout_val")[metric] for metric in METRICS})
    table = format_report(report).splitlines()
    twemoji = table.index(next(line for line in table if line.startswith("twemoji")))
    assert table[twemoji + 1].split() == ["linear_probe", "7.0", "17.0", "27.0", "83.0"]

    other = FoldsSpec(ROOT / "configs/clip/tiny_vit.yaml", tmp_path / "other", ["fluent-flat"],
                      shards=tmp_path / "folds", baseline=tmp_path / "probe" / "folds.json")
    with pytest.raises(MmtoolError, match="--baseline .*folds.json: has no fluent-flat fold"):
        run_folds(other, runner=fake_mmtool([], planted))


def test_the_group_through_names_is_reported_when_every_fold_has_it(tmp_path):
    names = next(iter(OPTIONAL_METRICS))

    def with_names(run: str, split: str) -> dict:
        return {**planted(run, split), names: {"noto": 0.7, "twemoji": 0.5}[run] + (split == "heldout_val") * 0.01}

    old = FoldsSpec(ROOT / "configs/clip/tiny_vit.yaml", tmp_path / "old", ["noto", "twemoji"],
                    shards=tmp_path / "folds")
    assert names not in run_folds(old, runner=fake_mmtool([], planted))["mean"]["heldout_train"]
    spec = FoldsSpec(ROOT / "configs/clip/tiny_vit.yaml", tmp_path / "run", ["noto", "twemoji"],
                     shards=tmp_path / "folds", baseline=tmp_path / "old" / "folds.json")
    report = run_folds(spec, runner=fake_mmtool([], with_names))
    assert report["mean"]["heldout_val"][names] == pytest.approx(0.61)
    assert report["worst"]["heldout_train"][names] == {"value": 0.5, "fold": "twemoji"}
    table = format_report(report).splitlines()
    means = [index for index, line in enumerate(table) if line.startswith("mean")]  # one per split
    assert [table[index].split()[-1] for index in means] == ["60.0", "61.0"]
    assert [table[index + 1].split()[-1] for index in means] == ["-", "-"]  # the baseline has no such figure

    mixed = FoldsSpec(ROOT / "configs/clip/tiny_vit.yaml", tmp_path / "mixed", ["noto", "twemoji"],
                      shards=tmp_path / "folds")
    one_fold_lacks = run_folds(mixed, runner=fake_mmtool([], lambda run, split: (
        with_names if run == "noto" else planted)(run, split)))
    assert names not in one_fold_lacks["mean"]["heldout_train"]
    assert "names acc" not in format_report(one_fold_lacks)


def test_every_planned_step_parses_and_trains_on_its_own_fold(tmp_path):
    spec = FoldsSpec(ROOT / "configs/clip/default.yaml", tmp_path / "run", ["noto", "twemoji"], [0, 5], "twemoji",
                     ["train.max_steps=20"], shards=tmp_path / "folds")
    steps = plan_folds(spec)
    root = typer.main.get_command(app)
    for step in steps:
        command, args = root, list(step.args)
        while hasattr(command, "commands"):
            command = command.commands[args.pop(0)]
        command.make_context(step.name, args)
    trains = {step.name: step.args for step in steps if step.args[0] == "pretrain-clip"}
    # seed 0 is the recipe's own seed: the twemoji fold's run counts as that seed, only seed 5 is an extra run
    assert list(trains) == ["pretrain-clip:noto", "pretrain-clip:twemoji", "pretrain-clip:twemoji:seed5"]
    noto = trains["pretrain-clip:noto"]
    assert f"data.train={tmp_path}/folds/noto/train-*.tar" in noto and "train.max_steps=20" in noto
    assert "train.seed=5" in trains["pretrain-clip:twemoji:seed5"]
    assert noto.index("train.max_steps=20") > noto.index(f"data.val={tmp_path}/folds/noto/val-*.tar")
    shards = [step for step in steps if step.name.startswith("shards:")]
    assert [(step.args[1], step.args[-1]) for step in shards] == [("emoji", "twemoji"), ("emoji-regroup", "noto")]
    assert shards[1].after == ["shards:twemoji"]  # a new render of twemoji's shards regroups noto's again


@pytest.mark.parametrize("spec, message", [
    ("1,x", "--seeds: expected comma-separated integers, got '1,x'"),
    ("3,3", "--seeds 3,3: a spread needs at least two different seeds"),
])
def test_bad_seeds_are_named(spec, message):
    with pytest.raises(MmtoolError, match=message):
        parse_seeds(spec)


def test_a_seed_fold_outside_the_folds_is_refused(tmp_path):
    spec = FoldsSpec(ROOT / "configs/clip/default.yaml", tmp_path, ["noto"], [0, 1], "twemoji")
    with pytest.raises(MmtoolError, match="--seed-fold twemoji is not among --styles noto"):
        plan_folds(spec)


def write_fold_shards(out: Path, style: str) -> None:
    """48 coloured squares in four groups over train / val / heldout_train / heldout_val, with meta.json."""
    groups = ["Smileys & Emotion", "Animals & Nature", "Food & Drink", "Travel & Places"]
    writer = SplitWriter(out, shard_size=50)
    with writer:
        for i in range(48):
            split = ("heldout_" if i % 3 == 0 else "") + ("val" if i % 4 == 0 else "train")
            name, group = f"thing {i}", groups[(i // 4) % 4]
            labels = {"name": name, "group": group, "subgroup": group, "base": str(i), "keywords": [],
                      "concept": name, "style": style}
            writer.write(split, encode_sample(f"{style}_{i}", png((60 * (i % 4), 5 * i, 255 - 5 * i)),
                                              [f"{name}, {group}"], labels))
    write_meta(out, "emoji", writer.close())


def clip_folds(*args):
    return subprocess.run([sys.executable, "-m", "mmtool", "clip-folds", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=clean_env())


@pytest.mark.slow
def test_two_folds_end_to_end_then_a_rerun_skips_them(tmp_path):
    """The real commands (~25 s): 2 tiny trainings, 4 evaluations; the report matches the eval JSONs."""
    for style in ("noto", "twemoji"):
        write_fold_shards(tmp_path / "folds" / style, style)
    args = ["--config", "configs/clip/tiny_vit.yaml", "--out", tmp_path / "run", "--styles", "noto,twemoji",
            "--shards", tmp_path / "folds", "--existing-shards",
            *[arg for item in TINY_RECIPE for arg in ("--set", item)]]
    done = clip_folds(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "folds.json").read_text())
    runs = {"noto": tmp_path / "run" / "noto", "twemoji": tmp_path / "run" / "twemoji"}
    for split in SPLITS:
        evals = {fold: json.loads((run / f"eval_{split}.json").read_text()) for fold, run in runs.items()}
        for metric in METRICS:
            values = {fold: figures[metric] for fold, figures in evals.items()}
            assert {fold: report["folds"][fold][split][metric] for fold in runs} == values
            assert report["mean"][split][metric] == pytest.approx(statistics.fmean(values.values()))
            assert report["worst"][split][metric]["value"] == min(values.values())
    assert "worst fold:" in done.stdout and "seeds" not in report

    trained = (tmp_path / "run" / "twemoji" / "clip.pt").stat().st_mtime_ns
    again = clip_folds(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "== " not in again.stdout  # no step ran
    assert (tmp_path / "run" / "twemoji" / "clip.pt").stat().st_mtime_ns == trained
