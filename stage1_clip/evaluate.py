"""Retrieval recall (both directions, over all items and within each label group) and zero-shot classification,
by prompt-template ensembles and by the classes' own names (probabilities_from_names)."""
from collections import Counter, defaultdict

import torch
import torch.nn.functional as F

from mmtool.progress import progress
from stage1_clip.style_views import mean_view_embedding, view_stack


def batch_starts(total: int, batch_size: int, desc: str | None):
    """Start indices of the batches; with `desc`, under a progress bar (a terminal only) counting batches."""
    starts = range(0, total, batch_size)
    return progress(starts, desc=desc, unit="batch") if desc else starts


@torch.no_grad()
def embed_images(model, images: torch.Tensor, batch_size: int, desc: str | None = None) -> torch.Tensor:
    param = next(model.parameters())
    chunks = [model.encode_image(images[i:i + batch_size].to(param.device, param.dtype))
              for i in batch_starts(len(images), batch_size, desc)]
    return torch.cat(chunks).float()  # [N, D]


@torch.no_grad()
def embed_views(model, crops: list, views: list[str], batch_size: int, desc: str | None = None) -> torch.Tensor:
    """Style views (stage1_clip/style_views.py): per image, the normalised mean of its views' unit embeddings."""
    param = next(model.parameters())
    encode = lambda pixels: model.encode_image(pixels.to(param.device, param.dtype))  # noqa: E731 - [B, D]
    chunks = [mean_view_embedding(encode, torch.stack([view_stack(crop, views)
                                                       for crop in crops[start:start + batch_size]]))  # [B, D]
              for start in batch_starts(len(crops), batch_size, desc)]
    return torch.cat(chunks)  # [N, D]


@torch.no_grad()
def embed_texts(model, tokenize, texts: list[str], batch_size: int, desc: str | None = None) -> torch.Tensor:
    device = next(model.parameters()).device
    chunks = []
    for i in batch_starts(len(texts), batch_size, desc):
        ids, mask = tokenize(texts[i:i + batch_size])
        chunks.append(model.encode_text(ids.to(device), mask.to(device)))
    return torch.cat(chunks).float()  # [N, D]


def same_caption(captions: list[str]) -> torch.Tensor:
    """[N, N] bool: texts i and j are the same caption (so image i matches text j)."""
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    caption_id = torch.tensor([ids[c] for c in captions])  # [N]
    return caption_id[:, None] == caption_id[None, :]  # [N, N]


def recall_at(scores: torch.Tensor, positive: torch.Tensor, ks) -> list[float]:
    """R@k for each k: the share of rows whose top-k columns (by score; -inf = not a candidate) hold a positive."""
    ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1)  # [N, K]
    hit = positive.gather(1, ranked.indices) & ranked.values.isfinite()  # [N, K]: the j-th ranked is a positive
    return [hit[:, :k].any(1).float().mean().item() for k in ks]


def retrieval_recall(image_emb: torch.Tensor, text_emb: torch.Tensor, captions: list[str],
                     ks=(1, 5, 10)) -> dict[str, float]:
    """Image i matches every text whose caption equals caption i (duplicates are not counted as misses)."""
    positive = same_caption(captions)  # [N_img, N_txt]
    similarity = image_emb @ text_emb.T  # [N_img, N_txt]
    metrics = {}
    for name, scores, pos in (("image_to_text", similarity, positive), ("text_to_image", similarity.T, positive.T)):
        for k, recall in zip(ks, recall_at(scores, pos, ks)):
            metrics[f"{name}_R@{k}"] = recall
    return metrics


def within_group_recall(image_emb: torch.Tensor, text_emb: torch.Tensor, captions: list[str], labels: list[str],
                        prefix: str, ks=(1, 5)) -> dict[str, float]:
    """Retrieval among similar items: each query's candidates are the items of its own label group only.

    Random in-batch negatives rarely share a fine label, so this is where hard negatives should show. Queries
    whose group holds no non-matching candidate (a one-item group) are left out; `{prefix}_chance_r1` is the
    R@1 of a random ranking over the same queries.
    """
    label_id = {label: i for i, label in enumerate(dict.fromkeys(labels))}
    group = torch.tensor([label_id[label] for label in labels])  # [N]
    candidate = group[:, None] == group[None, :]  # [N, N], symmetric
    positive = same_caption(captions) & candidate  # [N_img, N_txt]
    scored = ~(positive | ~candidate).all(1)  # [N]: queries with at least one negative candidate
    similarity = (image_emb @ text_emb.T).masked_fill(~candidate, float("-inf"))  # [N_img, N_txt]
    metrics = {f"{prefix}_queries": int(scored.sum())}
    for name, scores, pos in (("i2t", similarity, positive), ("t2i", similarity.T, positive.T)):
        for k, recall in zip(ks, recall_at(scores[scored], pos[scored], ks)):
            metrics[f"{prefix}_{name}_r{k}"] = recall
    metrics[f"{prefix}_chance_r1"] = (positive[scored].sum(1) / candidate[scored].sum(1)).mean().item()
    return metrics


def zero_shot_accuracy(model, tokenize, image_emb: torch.Tensor, labels: list[str],
                       templates: list[str], batch_size: int) -> float:
    """Classifier = mean of the normalised template embeddings per class (CLIP's prompt ensemble)."""
    classes = sorted(set(labels))
    class_emb = []
    for name in classes:
        readable = name.replace("-", " ").replace("_", " ")
        prompts = [t.format(readable) for t in templates]
        class_emb.append(F.normalize(embed_texts(model, tokenize, prompts, batch_size).mean(0), dim=-1))
    logits = image_emb @ torch.stack(class_emb).T  # [N, C]
    target = torch.tensor([classes.index(label) for label in labels])
    return (logits.argmax(1) == target).float().mean().item()


def probabilities_from_names(image_emb: torch.Tensor, name_emb: torch.Tensor, name_class: torch.Tensor,
                             classes: int, scale: float) -> torch.Tensor:
    """[N, D] images, [V, D] names, [V] class index of each name -> [N, C] P(class | image): the image's softmax
    over the names (at the CLIP's own logit scale) summed within each class. A coarse label ("an emoji group") is
    poorly described by a prompt, but its members' names are what the model was trained on (CHiLS, Novack et al.
    2023, classifies through subclass names the same way)."""
    name_probs = (scale * image_emb @ name_emb.T).softmax(dim=1)  # [N, V]
    return torch.zeros(len(image_emb), classes, dtype=name_probs.dtype, device=name_probs.device).index_add_(
        1, name_class.to(name_probs.device), name_probs)


def commonest_labels(pairs) -> dict[str, str]:
    """{item: its commonest label} over (item, label) pairs; a tie goes to the label seen first."""
    votes = defaultdict(Counter)
    for item, label in pairs:
        votes[item][label] += 1
    return {item: labels.most_common(1)[0][0] for item, labels in votes.items()}


def accuracy_from_names(image_emb: torch.Tensor, text_emb: torch.Tensor, captions: list[str], labels: list[str],
                        scale: float) -> float:
    """Zero-shot accuracy through the set's own captions (correct_from_names)."""
    return correct_from_names(image_emb, text_emb, captions, labels, scale).float().mean().item()


def correct_from_names(image_emb: torch.Tensor, text_emb: torch.Tensor, captions: list[str], labels: list[str],
                       scale: float) -> torch.Tensor:
    """[N] bool: each image's zero-shot label through the set's own captions is its own. Each distinct caption
    counts for the label it carries (the commonest when several), as the i->t retrieval candidates do."""
    classes = sorted(set(labels))
    first = {}
    for index, caption in enumerate(captions):
        first.setdefault(caption, index)
    names, label_of = list(first), commonest_labels(zip(captions, labels))
    name_class = torch.tensor([classes.index(label_of[name]) for name in names])  # [V]
    probs = probabilities_from_names(image_emb, text_emb[[first[name] for name in names]], name_class, len(classes),
                                     scale)  # [N, C]
    target = torch.tensor([classes.index(label) for label in labels])  # [N]
    return probs.argmax(1) == target


def evaluate_clip(model, tokenize, eval_set: dict, templates: list[str], batch_size: int = 256,
                  show_progress: bool = False, style_views: list[str] = ()) -> dict:
    """eval_set: {"image": [N,3,H,W], "caption": [N], "labels": {field: [N]}}, as make_eval_set gives.
    show_progress: bars over the embedding (eval-clip; not the evaluations inside a training run's own bar).
    style_views: images embedded as the mean over these renderings of eval_set["crop"] (stage1_clip/style_views.py)."""
    was_training = model.training
    model.eval()
    image_desc, text_desc = ("embed images", "embed captions") if show_progress else (None, None)
    image_emb = (embed_views(model, eval_set["crop"], list(style_views), batch_size, image_desc) if style_views
                 else embed_images(model, eval_set["image"], batch_size, image_desc))  # [N, D]
    text_emb = embed_texts(model, tokenize, eval_set["caption"], batch_size, text_desc)  # [N, D]
    metrics = retrieval_recall(image_emb, text_emb, eval_set["caption"])
    for field, labels in eval_set["labels"].items():
        metrics.update(within_group_recall(image_emb, text_emb, eval_set["caption"], labels, field))
    scale = model.temperature_scale().item()
    for field, labels in eval_set["labels"].items():
        metrics[f"zero_shot_{field}_acc"] = zero_shot_accuracy(model, tokenize, image_emb, labels, templates,
                                                               batch_size)
        metrics[f"zero_shot_{field}_from_names_acc"] = accuracy_from_names(image_emb, text_emb, eval_set["caption"],
                                                                           labels, scale)
        metrics[f"zero_shot_{field}_classes"] = len(set(labels))
    metrics["samples"] = len(eval_set["caption"])
    model.train(was_training)
    return metrics
