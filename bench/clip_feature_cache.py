"""Stage-1 samples/s with the frozen-tower caches off, building (a fresh cache) and built (a second run), through
the real loop and loader (`mmtool pretrain-clip`) on the real shards.

    .venv/bin/python bench/clip_feature_cache.py                   # default recipe, one epoch of data/emoji5
    .venv/bin/python bench/clip_feature_cache.py --steps 158 --runs live building    # two epochs each

The shards are linked into a temporary folder, so "building" starts from an empty cache and the cache beside the
real shards is left alone. samples/s counts steps 2..N (the first step's start-up excluded); wall_s is the training
loop's time, model loading and DeepSpeed start-up excluded.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def link_shards(pattern: str, into: Path) -> str:
    """Links the shards' folder's files (not its feature cache) into `into`; returns the pattern there."""
    folder = Path(pattern).parent
    for path in folder.iterdir():
        if path.is_file():
            (into / path.name).symlink_to(path.resolve())
    return str(into / Path(pattern).name)


def run(config: str, shards: str, out: Path, steps: int, cache: bool, extra: list[str], batch_size: int,
        epoch_steps: int) -> dict:
    sets = [f"data.train={shards}", "data.val=null", f"train.max_steps={steps}", "train.log_every=1",
            f"train.save_every={10 * steps}", f"data.feature_cache={str(cache).lower()}", *extra]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    subprocess.run([sys.executable, "-m", "mmtool", "pretrain-clip", "--config", config, "--out", str(out),
                    *[a for s in sets for a in ("--set", s)]], check=True, env=env, capture_output=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = sorted((r for r in records if r["split"] == "train"), key=lambda r: r["step"])
    first, last = train[0], train[-1]
    step_s = (last["time"] - first["time"]) / (last["step"] - first["step"])  # steps 2..N
    return {"steps": last["step"], "step_s": round(step_s, 3), "wall_s": round(step_s * last["step"], 1),
            "loss": round(last["loss"], 4), "epoch_samples_per_s": epoch_rates(train, batch_size, epoch_steps),
            **{k: round(v, 3) for k, v in last.items() if k.startswith(("image_cache", "text_cache"))}}


def epoch_rates(train: list[dict], batch_size: int, epoch_steps: int) -> list[float]:
    """samples/s of each epoch (epoch 1 from its step 2), from the records' clock."""
    times = {r["step"]: r["time"] for r in train}
    rates = []
    for start in range(1, max(times), epoch_steps):
        stop = min(start + epoch_steps, max(times))
        rates.append(round(batch_size * (stop - start) / (times[stop] - times[start]), 1))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/clip/default.yaml")
    parser.add_argument("--shards", default="data/emoji5/train-*.tar")
    parser.add_argument("--steps", type=int, default=79, help="79 = one epoch of data/emoji5 at batch 128")
    parser.add_argument("--epoch-steps", type=int, default=79, help="steps per epoch, for per-epoch figures")
    parser.add_argument("--runs", nargs="+", default=["live", "building", "built"],
                        help="live (no cache), building (empty cache), built (the cache building left)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--set", nargs="*", default=[], dest="extra", help="more config overrides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "shards").mkdir()
        shards = link_shards(args.shards, tmp / "shards")
        extra = [f"data.batch_size={args.batch_size}", *args.extra]
        rows = {}
        for name in args.runs:
            row = run(args.config, shards, tmp / name, args.steps, name != "live", extra, args.batch_size,
                      args.epoch_steps)
            row["samples_per_s"] = round(args.batch_size / row["step_s"], 1)
            rows[name] = row
            print(json.dumps({"run": name, **row}), flush=True)
        cache_mb = sum(f.stat().st_size for f in (tmp / "shards" / "feature_cache").rglob("*.pt")) / 2**20
        print(json.dumps({"cache_on_disk_mb": round(cache_mb, 1),
                          **{f"speedup_{name}": round(rows[name]["samples_per_s"] / rows["live"]["samples_per_s"], 2)
                             for name in rows if "live" in rows}}))

if __name__ == "__main__":
    main()
