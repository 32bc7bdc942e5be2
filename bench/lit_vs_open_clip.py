"""LiT-style training, mmtool vs open_clip on this CPU: pretrained towers locked (or their last blocks unlocked), the
projections learning; same data, batch, epochs, optimizer and seed. Samples/s, wall time per epoch, held-out R@1.

    bash bench/setup_open_clip.sh                     # once: open_clip's own venv under bench/.venv-open-clip
    flock /tmp/mmtool-cpu.lock .venv/bin/python bench/lit_vs_open_clip.py --views 8 1         # both towers locked
    flock /tmp/mmtool-cpu.lock .venv/bin/python bench/lit_vs_open_clip.py --unlocked-groups 3  # + blocks 14-15, head
    .venv/bin/python bench/lit_vs_open_clip.py --smoke  # every path, 2 short epochs on 2,048 samples

The towers are the default CLIP's: ImageNet EfficientNet-Lite0 at 96 px (open_clip: timm's tf_efficientnet_lite0,
the same network with TF "same" padding, given the bundled weights; its pooled features are checked equal to
mmtool's tower before training) and all-MiniLM-L6-v2 mean-pooled over its tokens (open_clip: its HF text encoder
with the mean pooler), each with a bias-free linear projection into 256 dimensions. Each tool locks with its own
options: open_clip `--lock-image --lock-image-unlocked-groups G --lock-text --lock-text-freeze-layer-norm` (its
BatchNorm layers keep training-mode statistics: see open_clip_command), mmtool `train.param_groups` (lr 0 = locked,
BatchNorm statistics frozen); G = 3 is EfficientNet-Lite0's blocks 14-15 and head conv, the default's unlocked part.
mmtool caches what is locked (stage1_clip/feature_cache.py): MiniLM's caption embeddings, and the trunk's output
for `--views` fixed augmented views per image (several values: one mmtool run each).

Data: the main job's four training styles (--data: data/emoji5/train-*.tar) as web-style shards both tools read as
they are: flattened on white, JPEG at 128 px, one caption each, 8 shards of 1,024 (so each of 2 loader workers holds
whole batches and an epoch is 64 steps on both sides). Augmentation: random-resized crop, scale (0.9, 1.0), bicubic
(open_clip's default; mmtool set to it, its style augmentations off). bf16 autocast over fp32 weights; torch AdamW,
lr 5e-4, betas 0.9/0.98, eps 1e-6, weight decay 0.2, clipping 1.0, 100 warm-up steps then cosine. Runs alternate
mmtool, open_clip, ... for --rounds.

Held-out R@1: open_clip's trained projections, logit scale and EfficientNet trunk (unlocked blocks, and the BatchNorm
statistics its training mode moved) are written into an mmtool checkpoint beside its run (MiniLM is checked
unchanged), and both checkpoints are scored by the same `mmtool eval-clip` on the held-out Twemoji drawings of
training concepts and of new concepts.
"""
import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from jpeg_shards import read_samples, to_jpeg, write_shard
from run_monitor import print_table, run_monitored

ROOT = Path(__file__).resolve().parent.parent
MMTOOL_PY = ROOT / ".venv/bin/python"
OPEN_CLIP_PY = ROOT / "bench/.venv-open-clip/bin/python"
DATA = ROOT / "data/emoji5"  # `mmtool data emoji --out data/emoji5 --styles all --eval-style twemoji`; --data
EVAL_SETS = {"twemoji_training_concepts": "heldout_train-*.tar", "twemoji_new_concepts": "heldout_val-*.tar"}
SHARD_SAMPLES, BATCH, IMAGE_PX, EMBED_DIM, CONTEXT = 1024, 128, 96, 256, 32
LOG_EVERY = 5
OPTIM = {"lr": 5e-4, "weight_decay": 0.2, "betas": (0.9, 0.98), "eps": 1e-6, "grad_clip": 1.0, "warmup": 100}
LITE_MEAN, LITE_STD = 127 / 255, 128 / 255  # EfficientNet-Lite's input normalisation
# mmtool's parameter groups for G unlocked groups (the first matching rule wins; no lr = the base lr).
MMTOOL_UNLOCKED = {0: [], 3: ['{pattern: "^vision\\\\.net\\\\.(_blocks\\\\.1[45]|_conv_head|_bn1)\\\\."}']}


# --- preparation (mmtool venv) ----------------------------------------------------------------------------------

def prepare_shards(work: Path, shards: int) -> Path:
    """`shards` web-style shards of SHARD_SAMPLES drawings each, the first of the source shards'; reused if there."""
    out = work / f"shards_{shards}"
    if (out / "done").is_file():
        return out
    sources = read_samples(sorted(str(p) for p in DATA.glob("train-*.tar")))[:shards * SHARD_SAMPLES]
    if len(sources) < shards * SHARD_SAMPLES:
        sys.exit(f"{DATA}/train-*.tar: {len(sources)} drawings, fewer than {shards} x {SHARD_SAMPLES}")
    out.mkdir(parents=True, exist_ok=True)
    samples = [(key, to_jpeg(png, 128), caption) for key, png, caption in sources]
    for index in range(shards):
        write_shard(out / f"train-{index:06d}.tar", samples[index * SHARD_SAMPLES:(index + 1) * SHARD_SAMPLES])
    (out / "done").write_text(str(len(samples)))
    return out


def write_open_clip_folder(oc_dir: Path) -> dict:
    """open_clip's `local-dir:` folder: config, MiniLM's tokenizer, and (child `init`) the pretrained weights."""
    from mmtool.pretrained import resolve_model_dir
    from stage1_clip.efficientnet import WEIGHTS_ALIAS, WEIGHTS_FILE

    minilm = resolve_model_dir("minilm")
    oc_dir.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm / name, oc_dir / name)
    model_cfg = {"embed_dim": EMBED_DIM,
                 "vision_cfg": {"timm_model_name": "tf_efficientnet_lite0", "timm_model_pretrained": False,
                                "timm_pool": "avg", "timm_proj": "linear", "image_size": IMAGE_PX},
                 "text_cfg": {"hf_model_name": str(minilm), "hf_tokenizer_name": str(minilm),
                              "hf_model_pretrained": True, "hf_proj_type": "linear",
                              "hf_pooler_type": "mean_pooler", "context_length": CONTEXT}}
    preprocess = {"mean": [LITE_MEAN] * 3, "std": [LITE_STD] * 3, "interpolation": "bicubic",
                  "resize_mode": "shortest"}
    (oc_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg,
                                                              "preprocess_cfg": preprocess}, indent=2))
    weights = resolve_model_dir(WEIGHTS_ALIAS) / WEIGHTS_FILE
    return run_child(["--child", "init", "--oc-dir", str(oc_dir), "--weights", str(weights)])


def run_child(argv: list[str]) -> dict:
    child = subprocess.run([str(OPEN_CLIP_PY), __file__, *argv], capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
    if child.returncode or not lines:
        sys.exit(f"child {argv[:2]} failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


# --- open_clip venv child ---------------------------------------------------------------------------------------

def paired_keys(source: dict, target: dict) -> list[tuple[str, str]]:
    """The two EfficientNet-Lite0 state dicts' tensors paired in order (both list the network's layers in the same
    order), batch counters left out; shapes asserted equal."""
    keep = [[k for k in d if not k.endswith("num_batches_tracked")] for d in (source, target)]
    assert len(keep[0]) == len(keep[1]), f"{len(keep[0])} vs {len(keep[1])} tensors"
    for a, b in zip(*keep):
        assert source[a].shape == target[b].shape, f"{a} {tuple(source[a].shape)} vs {b} {tuple(target[b].shape)}"
    return list(zip(*keep))


def child_init(oc_dir: str, weights: str) -> dict:
    """The open_clip model with the bundled ImageNet weights in its timm trunk (MiniLM comes from its folder),
    saved into oc_dir; the trunk's pooled features checked equal to efficientnet-lite-pytorch's on one batch."""
    import open_clip
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    del reference._fc
    reference.load_state_dict({k: v for k, v in torch.load(weights, weights_only=True).items()
                               if not k.startswith("_fc.")})
    model = open_clip.create_model(f"local-dir:{oc_dir}")
    trunk = model.visual.trunk
    source, target = reference.state_dict(), trunk.state_dict()
    trunk.load_state_dict({b: source[a] for a, b in paired_keys(source, target)}, strict=False)
    reference.eval(), trunk.eval()
    pixels = torch.randn(4, 3, IMAGE_PX, IMAGE_PX, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gap = (reference.extract_features(pixels).mean((2, 3)) - trunk(pixels)).abs().max().item()
    assert gap < 1e-5, f"timm trunk differs from efficientnet-lite-pytorch by {gap}"
    torch.save(model.state_dict(), Path(oc_dir) / "open_clip_pytorch_model.bin")
    reloaded = open_clip.create_model(f"local-dir:{oc_dir}")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
    return {"params": sum(p.numel() for p in model.parameters()), "trunk_gap": gap}


# --- training runs ----------------------------------------------------------------------------------------------

def mmtool_command(shards: Path, out: Path, epochs: int, unlocked: int, views: int, threads: int,
                   workers: int) -> list[str]:
    samples = len(list(shards.glob("train-*.tar"))) * SHARD_SAMPLES
    rules = ", ".join(MMTOOL_UNLOCKED[unlocked] + ['{pattern: "^(vision|text)\\\\.", lr: 0.0}'])
    settings = [f"data.train={shards}/train-*.tar", "data.val=null", f"data.train_samples={samples}",
                f"data.batch_size={BATCH}", f"data.workers={workers}", "data.random_resized_crop_scale=[0.9, 1.0]",
                "data.augment.grayscale=0.0", "data.augment.outline=0.0", f"data.cached_views={views}",
                f"train.max_steps={epochs * samples // BATCH}", f"train.log_every={LOG_EVERY}",
                "train.report_to=[]", f"train.save_every={10 ** 6}", f"train.threads={threads}", "train.seed=0",
                f"train.lr={OPTIM['lr']}", f"train.weight_decay={OPTIM['weight_decay']}",
                f"train.betas=[{OPTIM['betas'][0]}, {OPTIM['betas'][1]}]", f"train.eps={OPTIM['eps']}",
                f"train.grad_clip={OPTIM['grad_clip']}", f"train.warmup_steps={OPTIM['warmup']}",
                f"train.param_groups=[{rules}]"]
    return [str(MMTOOL_PY), "-m", "mmtool", "pretrain-clip", "--config", str(ROOT / "configs/clip/linear_probe.yaml"),
            "--out", str(out), *(arg for s in settings for arg in ("--set", s))]


def open_clip_command(shards: Path, oc_dir: Path, out: Path, epochs: int, unlocked: int, workers: int) -> list[str]:
    count = len(list(shards.glob("train-*.tar")))
    # Not --lock-image-freeze-bn-stats: open_clip 3.3.0's freeze_batch_norm_2d swaps timm's BatchNormAct2d for a plain
    # FrozenBatchNorm2d, dropping its activation (all 33 ReLU6 of EfficientNet-Lite0; the loss stays at chance).
    # So open_clip's locked trunk keeps BatchNorm in training mode, as its users run it.
    lock = ["--lock-image", "--lock-text", "--lock-text-unlocked-layers", "0", "--lock-text-freeze-layer-norm"]
    if unlocked:
        lock += ["--lock-image-unlocked-groups", str(unlocked)]
    return [str(OPEN_CLIP_PY), "-m", "open_clip_train.main", "--model", f"local-dir:{oc_dir}",
            "--train-data", f"{shards}/train-{{000000..{count - 1:06d}}}.tar", "--dataset-type", "webdataset",
            "--train-num-samples", str(count * SHARD_SAMPLES), "--batch-size", str(BATCH), "--workers", str(workers),
            "--precision", "amp_bf16", "--epochs", str(epochs), "--save-frequency", str(epochs), *lock,
            "--lr", str(OPTIM["lr"]), "--wd", str(OPTIM["weight_decay"]), "--beta1", str(OPTIM["betas"][0]),
            "--beta2", str(OPTIM["betas"][1]), "--eps", str(OPTIM["eps"]), "--grad-clip-norm",
            str(OPTIM["grad_clip"]), "--warmup", str(OPTIM["warmup"]), "--log-every-n-steps", str(LOG_EVERY),
            "--report-to", "", "--logs", str(out.parent), "--name", out.name, "--seed", "0"]


def mmtool_windows(out: Path) -> list[tuple[int, float]]:
    """(last step, seconds) of each logging window."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    windows, previous = [], 0
    for row in (r for r in rows if r["split"] == "train"):
        windows.append((row["step"], (row["step"] - previous) * BATCH / row["samples_per_s"]))
        previous = row["step"]
    return windows


def open_clip_windows(log_text: str, steps_per_epoch: int) -> list[tuple[int, float]]:
    """(last step, seconds) of each logging window: open_clip logs the epoch, the samples seen in it and the mean
    step time over the window."""
    pattern = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/\d+ .*?Batch \(t\): ([\d.]+),")
    windows, previous = [], 0
    for epoch, samples, seconds in pattern.findall(log_text):
        step = int(epoch) * steps_per_epoch + int(samples) // BATCH
        if step > previous:
            windows.append((step, (step - previous) * float(seconds)))
            previous = step
    return windows


def epoch_seconds(windows: list[tuple[int, float]], steps_per_epoch: int, epochs: int) -> list[float]:
    """Each epoch's seconds from the logging windows (a window is counted in the epoch of its last step)."""
    per_epoch = [0.0] * epochs
    for step, seconds in windows:
        per_epoch[min(math.ceil(step / steps_per_epoch), epochs) - 1] += seconds
    return per_epoch


def evaluate(checkpoint: Path) -> dict:
    scores = {}
    for name, shards in EVAL_SETS.items():
        out_json = checkpoint.parent / f"eval_{name}.json"
        child = subprocess.run([str(MMTOOL_PY), "-m", "mmtool", "eval-clip", "--clip", str(checkpoint), "--data",
                                str(DATA / shards), "--out-json", str(out_json)], capture_output=True, text=True,
                               cwd=ROOT)
        if child.returncode:
            sys.exit(f"eval-clip on {checkpoint} failed:\n{child.stderr[-2000:]}")
        result = json.loads(out_json.read_text())
        scores[name] = {key: round(100 * result[key], 1) for key in ("image_to_text_R@1", "text_to_image_R@1")}
    return scores


def open_clip_as_mmtool(template: Path, open_clip_checkpoint: Path, out: Path) -> Path:
    """An mmtool checkpoint with open_clip's trained weights: its projections, logit scale and EfficientNet trunk
    (paired in order); MiniLM is asserted unchanged (locked on both sides)."""
    import torch

    from stage1_clip.checkpoint import load_clip, save_clip

    bundle = load_clip(template)
    state = bundle.model.state_dict()
    theirs = torch.load(open_clip_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    theirs = {key.removeprefix("module."): value.float() for key, value in theirs.items()}
    ours_trunk = {k[len("vision.net."):]: v for k, v in state.items() if k.startswith("vision.net.")}
    their_trunk = {k[len("visual.trunk."):]: v for k, v in theirs.items() if k.startswith("visual.trunk.")}
    for ours, their in paired_keys(ours_trunk, their_trunk):
        state[f"vision.net.{ours}"] = their_trunk[their]
    state["image_projection.weight"] = theirs["visual.head.proj.weight"]
    state["text_projection.weight"] = theirs["text.proj.weight"]
    state["logit_scale"] = theirs["logit_scale"].reshape(state["logit_scale"].shape)
    for key, value in theirs.items():
        if key.startswith("text.transformer.") and f"text.model.{key[17:]}" in state:
            assert torch.equal(value, state[f"text.model.{key[17:]}"]), f"open_clip's locked MiniLM changed: {key}"
    save_clip(out, bundle.config, state, bundle.tokenizer, bundle.model)
    return out


def run_round(tool: str, views: int | None, index: int, args, shards: Path, oc_dir: Path, work: Path) -> dict:
    """One training run of `tool` (mmtool with `views` cached views per image), timed and memory-sampled."""
    label = f"mmtool_v{views}" if tool == "mmtool" else tool
    out = work / f"{label}_g{args.unlocked_groups}_r{index}_{int(time.time())}"
    steps_per_epoch = len(list(shards.glob("train-*.tar"))) * SHARD_SAMPLES // BATCH
    log_path = Path(f"{out}.log")
    started = time.perf_counter()
    if tool == "mmtool":
        shutil.rmtree(shards / "feature_cache", ignore_errors=True)  # every run starts with an empty cache
        command = mmtool_command(shards, out, args.epochs, args.unlocked_groups, views, args.threads, args.workers)
        memory = run_monitored(command, args.threads, log_path)
        wall = time.perf_counter() - started
        windows = mmtool_windows(out)
    else:
        memory = run_monitored(open_clip_command(shards, oc_dir, out, args.epochs, args.unlocked_groups,
                                                 args.workers), args.threads, log_path)
        wall = time.perf_counter() - started
        windows = open_clip_windows(log_path.read_text(), steps_per_epoch)
    per_epoch = epoch_seconds(windows, steps_per_epoch, args.epochs)
    row = {"tool": label if tool == "open_clip" else f"mmtool, {views} views", "round": index, "wall_s": round(wall, 1),
           "epoch_s": " / ".join(f"{s:.0f}" for s in per_epoch),
           "samples_per_s": round(args.epochs * steps_per_epoch * BATCH / sum(per_epoch), 1),
           "later_epochs_samples_per_s": round((args.epochs - 1) * steps_per_epoch * BATCH / sum(per_epoch[1:]), 1),
           **memory, "out": str(out)}
    print(f"  round {index} {tool}: {row}", flush=True)
    return row


def main() -> None:
    global DATA
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of 64 steps (8 x 1,024 drawings / 128)")
    parser.add_argument("--unlocked-groups", type=int, default=0, choices=sorted(MMTOOL_UNLOCKED),
                        help="0: both towers locked; 3: EfficientNet-Lite0's blocks 14-15 and head conv learn")
    parser.add_argument("--views", type=int, nargs="+", default=[8],
                        help="mmtool's cached augmented views per image: one mmtool run per value each round")
    parser.add_argument("--rounds", type=int, default=1, help="alternating mmtool / open_clip rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads of the training process")
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes")
    parser.add_argument("--data", type=Path, default=DATA, help="the emoji5 shards: train-*, heldout_*")
    parser.add_argument("--work", default="runs/lit_vs_open_clip")
    parser.add_argument("--smoke", action="store_true", help="2 shards, 2 epochs, 1 round")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--oc-dir", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    DATA = args.data.resolve()
    if args.child:
        print("RESULT " + json.dumps({"init": lambda: child_init(args.oc_dir, args.weights)}[args.child]()))
        return
    if not OPEN_CLIP_PY.exists():
        sys.exit(f"{OPEN_CLIP_PY} missing: run bench/setup_open_clip.sh first")
    if args.smoke:
        args.epochs, args.rounds = 2, 1
        OPTIM["warmup"] = 5
    work = ROOT / args.work
    shards = prepare_shards(work, 2 if args.smoke else 8)
    oc_dir = work / "open_clip_model"
    print(f"open_clip model: {write_open_clip_folder(oc_dir)}", flush=True)
    rows = []
    for index in range(args.rounds):
        for tool, views in [("mmtool", v) for v in args.views] + [("open_clip", None)]:
            rows.append(run_round(tool, views, index, args, shards, oc_dir, work))
            out = Path(rows[-1]["out"])
            if tool == "open_clip":  # the round's first mmtool checkpoint gives the config and locked weights
                template = Path(rows[-1 - len(args.views)]["out"]) / "clip.pt"
                checkpoint = open_clip_as_mmtool(template, out / "checkpoints" / f"epoch_{args.epochs}.pt",
                                                 out / "clip_from_open_clip.pt")
            else:
                checkpoint = out / "clip.pt"
            for name, scores in evaluate(checkpoint).items():
                rows[-1][f"{name} i2t/t2i R@1"] = f"{scores['image_to_text_R@1']} / {scores['text_to_image_R@1']}"
    rates = {tool: statistics.mean(r["samples_per_s"] for r in rows if r["tool"] == tool)
             for tool in dict.fromkeys(r["tool"] for r in rows)}
    for row in rows:
        row["vs_open_clip"] = f"{rates[row['tool']] / rates['open_clip']:.2f}" if row["round"] == 0 else ""
    print(f"\nunlocked groups {args.unlocked_groups}, {args.epochs} epochs x "
          f"{len(list(shards.glob('train-*.tar'))) * SHARD_SAMPLES // BATCH} steps x {BATCH}, threads {args.threads}, "
          f"workers {args.workers}; vs_open_clip: samples/s over the run, mean of the rounds")
    print_table(["tool", "round", "wall_s", "epoch_s", "samples_per_s", "vs_open_clip", "later_epochs_samples_per_s",
                 *[f"{name} i2t/t2i R@1" for name in EVAL_SETS], "peak_rss_GiB", "peak_tree_pss_GiB"], rows)


if __name__ == "__main__":
    main()
