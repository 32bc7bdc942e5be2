"""mmtool vs open_clip on this CPU: the same CLIP, data, batch, precision, threads and optimizer, trained by each tool.

    bash bench/setup_open_clip.sh                     # once: open_clip's own venv under bench/.venv-open-clip
    flock /tmp/mmtool-cpu.lock .venv/bin/python bench/vs_open_clip.py --models tiny_vit --rounds 2
    flock /tmp/mmtool-cpu.lock .venv/bin/python bench/vs_open_clip.py --models vit_b32 --steps 12
    .venv/bin/python bench/vs_open_clip.py --smoke    # every code path on a toy model in well under a minute
    bash bench/gpu.sh --real-data                     # on one GPU: ViT-B/16, both compiled, web-style JPEG shards

What is matched: architecture (parameter counts asserted equal), the tokenizer (mmtool's sentencepiece model,
handed to open_clip as a Hugging Face tokenizer; both pool at the end-of-text token), the webdataset shards
(resampled on both sides), random-resized-crop scale (0.9, 1.0), batch size, bf16 autocast with fp32 weights,
torch intra-op threads, loader workers, and torch AdamW with the same lr / betas / eps / weight decay / clipping.
Not matched, because each tool is what it is: the torch version (open_clip needs torchvision, which only imports
beside torch 2.14.1 here; mmtool runs on the project's torch 2.13.0), mmtool's DeepSpeed engine vs open_clip's plain
loop, and the decoders (open_clip: torchvision transforms on PIL; mmtool: Pillow + numpy, transparency on white).

Training: each tool's own CLI trains for --warmup + --steps steps; samples/s is total samples / total wall time of
the logging windows after the warm-up (both tools log every 5 steps and their windows include waiting for data).
Runs alternate mmtool, open_clip, mmtool, ... for --rounds rounds; the table gives the mean over rounds. Peak
memory is sampled every 0.5 s: RSS of the training process and PSS of its whole process tree (loader workers too).
Pipeline: decoded + augmented + tokenised images/s of one loader in the main process with one thread, i.e. what
one loader worker delivers.

--gpu (one CUDA device; bench/gpu.sh --real-data sets it up): each tool as it ships for GPUs, fed by its own
loader from --shards: mmtool's config as it is (ZeRO-2, torch.compile of both towers), open_clip with
--torchcompile (the whole model); bf16 autocast on both. Peak GPU memory is sampled from nvidia-smi (what each
process holds, allocator cache included), and MFU = stage1_clip.flops.train_step_flops / step time against a bf16
matmul measured in the same run and against the datasheet's dense bf16 rate (--datasheet-tflops). MFU is left out
for patch-dropout runs: their FLOPs are not the model's.
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gpu_figures import gpu_name, measured_matmul_flops, mfu
from run_monitor import print_table, run_monitored

ROOT = Path(__file__).resolve().parent.parent
MMTOOL_PY = ROOT / ".venv/bin/python"
OPEN_CLIP_PY = ROOT / "bench/.venv-open-clip/bin/python"
SHARDS = "data/emoji/train-*.tar"
MODELS = {"tiny_vit": ("configs/clip/tiny_vit.yaml", 128), "vit_b32": ("configs/clip/vit_b32.yaml", 32),
          "vit_b16": ("configs/clip/vit_b16.yaml", 1024)}
LOG_EVERY = 5
CROP_SCALE = (0.9, 1.0)  # open_clip's default train crop; mmtool is set to it
GPU, BATCH = False, None  # set from --gpu / --batch in main()
OPTIM = {"lr": 5e-4, "weight_decay": 0.2, "betas": (0.9, 0.98), "eps": 1e-6, "grad_clip": 1.0, "warmup": 100}
SMOKE_OVERRIDES = ["model.embed_dim=16", "model.vision.image_size=32", "model.vision.patch_size=16",
                   "model.vision.width=32", "model.vision.layers=1", "model.vision.heads=2",
                   "model.text.context_length=16", "model.text.width=32", "model.text.layers=1",
                   "model.text.heads=2", "tokenizer.vocab_size=300"]


# --- preparation (mmtool venv) ----------------------------------------------------------------------------------

def prepare(model_key: str, work: Path, overrides: list[str], with_open_clip: bool) -> dict:
    """Tokenizer, open_clip model folder and the matched settings for one model; checks parameter counts."""
    from mmtool.config import load_config
    from mmtool.data.reading.loader import resolve_shards
    from stage1_clip.config import ClipConfig
    from stage1_clip.tokenizer_setup import train_tokenizer

    config_path, batch = MODELS[model_key]
    batch = BATCH or batch
    cfg = load_config(ClipConfig, ROOT / config_path, overrides)
    work.mkdir(parents=True, exist_ok=True)
    urls = resolve_shards(str(ROOT / SHARDS))
    tokenizer_path = work / "tokenizer.model"
    if not tokenizer_path.is_file():
        train_tokenizer(urls, cfg.tokenizer.vocab_size, cfg.tokenizer.train_samples).save(tokenizer_path)
    oc_dir = work / "open_clip_model"
    vocab = write_open_clip_folder(cfg, tokenizer_path, oc_dir)
    check_tokenizers_agree(tokenizer_path, oc_dir, urls, cfg.model.text.context_length)
    mm_params = mmtool_param_count(cfg, vocab)
    if with_open_clip:
        oc_params = int(run_child(OPEN_CLIP_PY, ["--child", "count", "--oc-dir", str(oc_dir)])["params"])
        print(f"{model_key}: parameters mmtool {mm_params:,} / open_clip {oc_params:,} (vocab {vocab})", flush=True)
        assert mm_params == oc_params, f"{model_key}: architectures differ ({mm_params} vs {oc_params} parameters)"
    return {"model": model_key, "config": config_path, "batch": batch, "cfg": cfg, "vocab": vocab,
            "tokenizer": tokenizer_path, "oc_dir": oc_dir, "params": mm_params, "overrides": overrides}


def write_open_clip_folder(cfg, tokenizer_path: Path, oc_dir: Path) -> int:
    """open_clip's `local-dir:` model folder: open_clip_config.json + mmtool's vocabulary as an HF tokenizer."""
    import sentencepiece as spm
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from stage1_clip.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    vocab = sp.get_piece_size()
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(vocab)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=UNK_ID, byte_fallback=False))
    # sentencepiece's nmt_nfkc_cf: NFKC, case folding, runs of spaces collapsed; "▁" marks word starts.
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.Strip(),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = sp.id_to_piece(BOS_ID), sp.id_to_piece(EOS_ID)
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A {eos}",
                                                       special_tokens=[(bos, BOS_ID), (eos, EOS_ID)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=sp.id_to_piece(UNK_ID),
                            pad_token=sp.id_to_piece(PAD_ID)).save_pretrained(oc_dir)
    model_cfg = open_clip_model_cfg(cfg, vocab)
    model_cfg["text_cfg"].update(hf_tokenizer_name="local", tokenizer_kwargs={"clean": "whitespace"})
    (oc_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}, indent=2))
    return vocab


def open_clip_model_cfg(cfg, vocab: int) -> dict:
    """open_clip's model config (CLIP(**cfg) keyword arguments) for the same ViT CLIP as mmtool's `cfg`."""
    from stage1_clip.tokenizer import EOS_ID, PAD_ID

    vision, text = cfg.model.vision, cfg.model.text
    return {
        "embed_dim": cfg.model.embed_dim,
        "vision_cfg": {"image_size": vision.image_size, "patch_size": vision.patch_size, "width": vision.width,
                       "layers": vision.layers, "head_width": vision.width // vision.heads,
                       "mlp_ratio": vision.mlp_ratio},
        "text_cfg": {"context_length": text.context_length, "vocab_size": vocab, "width": text.width,
                     "layers": text.layers, "heads": text.heads, "mlp_ratio": text.mlp_ratio,
                     "pad_id": PAD_ID, "eos_id": EOS_ID, "pool_type": "eos"},
    }


def check_tokenizers_agree(tokenizer_path: Path, oc_dir: Path, urls: list[str], context_length: int) -> None:
    """Same ids from mmtool's tokenizer and the converted one on real captions (open_clip truncates the tail)."""
    from transformers import AutoTokenizer

    from stage1_clip.tokenizer import SentencePieceTokenizer
    from stage1_clip.tokenizer_setup import iter_captions

    captions = list(iter_captions(urls, 300))
    ours, _ = SentencePieceTokenizer.load(tokenizer_path)(captions, context_length)
    theirs = AutoTokenizer.from_pretrained(oc_dir)(captions, max_length=context_length, padding="max_length",
                                                   truncation=True, return_tensors="pt").input_ids
    same = (ours == theirs).all(dim=1).float().mean().item()
    print(f"tokenizers: {same:.1%} of {len(captions)} captions tokenised identically", flush=True)
    assert same > 0.95, f"converted tokenizer disagrees with mmtool's on {1 - same:.0%} of captions"


def mmtool_param_count(cfg, vocab: int) -> int:
    import torch

    from stage1_clip.model import CLIP

    with torch.device("meta"):
        return sum(p.numel() for p in CLIP(cfg.model, cfg.loss, vocab).parameters())


# --- children --------------------------------------------------------------------------------------------------

def run_child(python: Path, argv: list[str]) -> dict:
    child = subprocess.run([str(python), __file__, *argv, "--shards", SHARDS], capture_output=True, text=True,
                           cwd=ROOT)
    lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
    if child.returncode or not lines:
        sys.exit(f"child {argv[:2]} failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def child_count(oc_dir: str) -> dict:
    import open_clip

    model = open_clip.create_model(f"local-dir:{oc_dir}")
    return {"params": sum(p.numel() for p in model.parameters())}


def child_pipeline_mmtool(prep: dict, batches: int) -> dict:
    import torch

    from mmtool.data.reading.images import AugmentConfig
    from mmtool.data.reading.loader import make_train_loader, resolve_shards
    from stage1_clip.tokenizer import SentencePieceTokenizer

    torch.set_num_threads(1)  # as inside a DataLoader worker
    tokenizer = SentencePieceTokenizer.load(prep["tokenizer"])
    loader = make_train_loader(resolve_shards(str(ROOT / SHARDS)), batch_size=prep["batch"],
                               image_size=prep["image_size"], epoch=0, seed=0, rank=0, world_size=1, workers=0,
                               batches_per_epoch=batches + 1, augment=AugmentConfig(CROP_SCALE), resampled=True)
    return time_batches(loader, lambda batch: tokenizer(batch["caption"], prep["context_length"]), prep["batch"])


def child_pipeline_open_clip(prep: dict, batches: int) -> dict:
    import open_clip
    import torch
    from open_clip_train.data import get_data
    from open_clip_train.params import parse_args

    torch.set_num_threads(1)
    model_name = f"local-dir:{prep['oc_dir']}"
    _, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(model_name)
    args = parse_args(["--train-data", open_clip_shard_spec(), "--dataset-type", "webdataset",
                       "--dataset-resampled", "--train-num-samples", str(prep["batch"] * (batches + 1)),
                       "--batch-size", str(prep["batch"]), "--workers", "0"])
    args.world_size, args.rank, args.distributed = 1, 0, False
    data = get_data(args, (preprocess_train, preprocess_val), epoch=0,
                    tokenizer=open_clip.get_tokenizer(model_name))
    return time_batches(data["train"].dataloader, lambda batch: None, prep["batch"])


def time_batches(loader, finish, batch_size: int) -> dict:
    """Images/s over all batches but the first (which pays for opening shards and filling buffers)."""
    count, start = -1, None
    for batch in loader:
        finish(batch)
        count += 1
        if start is None:
            start = time.perf_counter()
    elapsed = time.perf_counter() - start
    return {"images_per_s": round(count * batch_size / elapsed, 1), "batches": count}


def open_clip_shard_spec() -> str:
    """The braced shard list webdataset expands (open_clip takes no globs)."""
    names = sorted(p.name for p in (ROOT / SHARDS).parent.glob(Path(SHARDS).name))
    numbers = [re.search(r"(\d+)\.tar$", n).group(1) for n in names]
    return str(ROOT / Path(SHARDS).parent / f"train-{{{numbers[0]}..{numbers[-1]}}}.tar")


# --- training runs ---------------------------------------------------------------------------------------------

def mmtool_command(prep: dict, out: Path, steps: int, threads: int, workers: int) -> list[str]:
    # On a GPU the config's own engine settings (ZeRO stage, compile) stay; on the CPU, ZeRO-0 and fixed threads.
    cpu_engine = [] if GPU else [f"train.threads={threads}", "train.deepspeed=configs/deepspeed/zero0_bf16.json"]
    # One epoch = the run, as open_clip's --train-num-samples: no loader restart at an epoch boundary mid-run.
    settings = [f"data.train={ROOT / SHARDS}", f"data.batch_size={prep['batch']}", f"data.workers={workers}",
                f"data.train_samples={prep['batch'] * steps}", "data.val=null",
                "data.resampled=true", f"data.random_resized_crop_scale=[{CROP_SCALE[0]}, {CROP_SCALE[1]}]",
                f"tokenizer.path={prep['tokenizer']}", f"train.max_steps={steps}", f"train.log_every={LOG_EVERY}",
                "train.report_to=[]", f"train.save_every={10 * steps}", *cpu_engine,
                f"train.lr={OPTIM['lr']}", f"train.weight_decay={OPTIM['weight_decay']}",
                f"train.betas=[{OPTIM['betas'][0]}, {OPTIM['betas'][1]}]", f"train.eps={OPTIM['eps']}",
                f"train.grad_clip={OPTIM['grad_clip']}", f"train.warmup_steps={OPTIM['warmup']}",
                *prep["overrides"], *prep["extra_sets"]]
    return [str(MMTOOL_PY), "-m", "mmtool", "pretrain-clip", "--config", str(ROOT / prep["config"]), "--out",
            str(out), *(arg for s in settings for arg in ("--set", s))]


def open_clip_command(prep: dict, out: Path, steps: int, workers: int) -> list[str]:
    return [str(OPEN_CLIP_PY), "-m", "open_clip_train.main", "--model", f"local-dir:{prep['oc_dir']}",
            "--train-data", open_clip_shard_spec(), "--dataset-type", "webdataset", "--dataset-resampled",
            "--train-num-samples", str(prep["batch"] * steps), "--batch-size", str(prep["batch"]),
            "--workers", str(workers), "--precision", "amp_bf16", "--epochs", "1",
            "--lr", str(OPTIM["lr"]), "--wd", str(OPTIM["weight_decay"]), "--beta1", str(OPTIM["betas"][0]),
            "--beta2", str(OPTIM["betas"][1]), "--eps", str(OPTIM["eps"]),
            "--grad-clip-norm", str(OPTIM["grad_clip"]), "--warmup", str(OPTIM["warmup"]),
            "--log-every-n-steps", str(LOG_EVERY), "--save-frequency", "0", "--report-to", "",
            "--logs", str(out.parent), "--name", out.name, "--seed", "0", *(["--torchcompile"] if GPU else [])]


def rate_after_warmup(windows: list[tuple[int, int, float]], warmup: int) -> float:
    """windows: (first step, last step, seconds per step averaged over the window); steps counted from 1."""
    kept = [(last - first + 1, sec) for first, last, sec in windows if first > warmup]
    if not kept:
        raise ValueError(f"no logging window starts after the {warmup} warm-up steps: run more steps")
    return sum(n for n, _ in kept) / sum(n * sec for n, sec in kept)  # steps per second


def mmtool_windows(out: Path, batch: int) -> list[tuple[int, int, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    windows, previous = [], 0
    for row in train:
        windows.append((previous + 1, row["step"], batch / row["samples_per_s"]))
        previous = row["step"]
    return windows


OPEN_CLIP_LINE = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/\d+ .*?Batch \(t\): ([\d.]+),")


def open_clip_windows(log_text: str, batch: int) -> list[tuple[int, int, float]]:
    windows, previous = [], 0
    for samples, seconds in OPEN_CLIP_LINE.findall(log_text):
        step = int(samples) // batch  # open_clip logs the samples seen so far, this step included
        windows.append((previous + 1, step, float(seconds)))
        previous = step
    return windows


def train_both(prep: dict, work: Path, args) -> list[dict]:
    rows = {tool: [] for tool in args.tools}
    total = args.warmup + args.steps
    for round_index in range(args.rounds):
        for tool in args.tools:
            out = work / f"{tool}_run{round_index}_{int(time.time())}"
            log_path = Path(f"{out}.log")
            if tool == "mmtool":
                memory = run_monitored(mmtool_command(prep, out, total, args.threads, args.workers), args.threads,
                                       log_path, GPU)
                windows = mmtool_windows(out, prep["batch"])
            else:
                memory = run_monitored(open_clip_command(prep, out, total, args.workers), args.threads, log_path, GPU)
                windows = open_clip_windows(log_path.read_text(), prep["batch"])
            rate = rate_after_warmup(windows, args.warmup) * prep["batch"]
            rows[tool].append({"samples_per_s": rate, **memory})
            print(f"  {prep['model']} round {round_index} {tool}: {rate:.1f} samples/s, {memory}", flush=True)
    return [{"tool": tool, "samples_per_s": round(statistics.mean(r["samples_per_s"] for r in runs), 1),
             "spread": f"{min(r['samples_per_s'] for r in runs):.1f}-{max(r['samples_per_s'] for r in runs):.1f}",
             "peak_rss_GiB": max(r["peak_rss_GiB"] for r in runs),
             "peak_tree_pss_GiB": max(r["peak_tree_pss_GiB"] for r in runs),
             **({"peak_gpu_GiB": max(r["peak_gpu_GiB"] for r in runs)} if GPU else {})}
            for tool, runs in rows.items()]


# --- main ------------------------------------------------------------------------------------------------------

def main() -> None:
    global SHARDS, MMTOOL_PY, OPEN_CLIP_PY, GPU, BATCH
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=20, help="measured steps per run, after --warmup")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out (a multiple of 5, the log window)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating mmtool / open_clip rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads of the training process")
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes")
    parser.add_argument("--pipeline-batches", type=int, default=6)
    parser.add_argument("--skip", nargs="*", default=[], choices=["pipeline", "train"])
    parser.add_argument("--mmtool-set", nargs="*", default=[], help="extra --set for mmtool's runs (lever trials)")
    parser.add_argument("--tools", nargs="+", default=["mmtool", "open_clip"], choices=["mmtool", "open_clip"])
    parser.add_argument("--work", default="runs/vs_open_clip")
    parser.add_argument("--smoke", action="store_true", help="toy model, 10 steps, 1 round: checks every path")
    parser.add_argument("--gpu", action="store_true", help="train on CUDA device 0, each tool compiled (see above)")
    parser.add_argument("--batch", type=int, help="instead of the model's batch in MODELS")
    parser.add_argument("--shards", default=SHARDS, help="training shards, a glob (both tools read them)")
    parser.add_argument("--mmtool-python", default=str(MMTOOL_PY), help="a python that imports mmtool's needs")
    parser.add_argument("--open-clip-python", default=str(OPEN_CLIP_PY), help="a python that imports open_clip")
    parser.add_argument("--datasheet-tflops", type=float, default=989.0,
                        help="dense bf16 TFLOP/s of the card's datasheet (H100/H200 SXM: 989)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--oc-dir", help=argparse.SUPPRESS)
    parser.add_argument("--prep", help=argparse.SUPPRESS)
    args = parser.parse_args()
    SHARDS, MMTOOL_PY, OPEN_CLIP_PY = args.shards, Path(args.mmtool_python), Path(args.open_clip_python)
    GPU, BATCH = args.gpu, args.batch
    if args.child:
        prep = json.loads(args.prep) if args.prep else {}
        result = {"count": lambda: child_count(args.oc_dir),
                  "pipeline-mmtool": lambda: child_pipeline_mmtool(prep, args.pipeline_batches),
                  "pipeline-open_clip": lambda: child_pipeline_open_clip(prep, args.pipeline_batches)}[args.child]()
        print("RESULT " + json.dumps(result))
        return
    if "open_clip" in args.tools and not OPEN_CLIP_PY.exists():
        sys.exit(f"{OPEN_CLIP_PY} missing: run bench/setup_open_clip.sh first")
    if args.smoke:
        args.models, args.steps, args.warmup, args.rounds, args.pipeline_batches = ["tiny_vit"], 5, 5, 1, 2
    train_rows, pipeline_rows = [], []
    matmul = measured_matmul_flops() if GPU else None
    for model_key in args.models:
        work = ROOT / args.work / ("smoke" if args.smoke else model_key)
        prep = prepare(model_key, work, SMOKE_OVERRIDES if args.smoke else [], "open_clip" in args.tools)
        if args.smoke:
            prep["batch"] = 16
        prep["extra_sets"] = args.mmtool_set
        child_prep = json.dumps({"tokenizer": str(prep["tokenizer"]), "oc_dir": str(prep["oc_dir"]),
                                 "batch": prep["batch"], "image_size": prep["cfg"].model.vision.image_size,
                                 "context_length": prep["cfg"].model.text.context_length})
        if "pipeline" not in args.skip:
            for tool, python in (("mmtool", MMTOOL_PY), ("open_clip", OPEN_CLIP_PY)):
                if tool not in args.tools:
                    continue
                result = run_child(python, ["--child", f"pipeline-{tool}", "--prep", child_prep,
                                            "--pipeline-batches", str(args.pipeline_batches)])
                pipeline_rows.append({"model": model_key, "tool": tool, "image_px": prep["cfg"].model.vision.image_size,
                                      "batch": prep["batch"], **result})
        if "train" not in args.skip:
            rows = train_both(prep, work, args)
            rates = {row["tool"]: row["samples_per_s"] for row in rows}
            ratio = f"{rates['mmtool'] / rates['open_clip']:.2f}" if len(rates) == 2 else ""
            for row in rows:
                train_rows.append({"model": model_key, "params": f"{prep['params']:,}", "batch": prep["batch"],
                                   **row, "mmtool/open_clip": ratio if row["tool"] == "mmtool" else "",
                                   **(mfu(prep["cfg"].model, prep["batch"], row["samples_per_s"], matmul,
                                          args.datasheet_tflops, prep["extra_sets"]) if GPU else {})})
    if matmul:
        print(f"\n{gpu_name()}: bf16 matmul measured at {matmul / 1e12:.1f} TFLOP/s (datasheet "
              f"{args.datasheet_tflops:.0f}); shards {SHARDS}")
    print(f"\nthreads {args.threads}, workers {args.workers}, bf16 autocast, {args.warmup} warm-up + {args.steps} "
          f"measured steps, {args.rounds} alternating round(s)" + (f", mmtool --set {args.mmtool_set}"
                                                                     if args.mmtool_set else ""))
    if pipeline_rows:
        print_table(["model", "tool", "image_px", "batch", "images_per_s", "batches"], pipeline_rows)
    if train_rows:
        print()
        print_table(["model", "params", "batch", "tool", "samples_per_s", "spread", "mmtool/open_clip",
                     *(["MFU_measured", "MFU_datasheet", "peak_gpu_GiB"] if GPU else []),
                     "peak_rss_GiB", "peak_tree_pss_GiB"], train_rows)


if __name__ == "__main__":
    main()
