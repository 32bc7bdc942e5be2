"""Tower tags: the stage-1 CLIP's own nearest names and groups for an image, written as text after its image tokens.

A 135M LLM tuned on a few thousand conversations does not learn to read a concept's name out of ten image tokens
(docs/stage23_results.md: 0-1% naming on held-out drawings while its tower names 14-17%). Its CLIP tower already
ranks names by image-text similarity; tags hand that ranking to the LLM as words it can copy and compare, the way
LENS (Berrios et al. 2023) feeds a frozen LLM with CLIP's tags. The image tokens stay: the LLM reads both.

Groups are ranked through the names when the training data pairs names with groups (`name_groups`): a group's
score is the softmax mass of its names at the CLIP's own logit scale (stage1_clip/evaluate.py,
probabilities_from_names). An "emoji group" prompt is far from anything CLIP was trained on, its members' names are
not: on held-out Twemoji drawings the tower's top group was right for 27% by prompts and 77% through the names
(40% and 52% averaged over the groups; docs/stage23_results.md). Without pairs, groups are ranked by their prompt
ensembles.

The vocabulary (names and groups) and its CLIP text embeddings are fixed when stage 3 starts and saved with the
model, so an image's tags need only the tower's image embedding (the CLIP embedding token's vector). The same
tagging runs in training, chat, ask and eval-llava: a prompt's `<image>` marker becomes `<image>` followed by one
line, e.g. "Tags:bar chart;card file box;chart increasing. Groups: Objects; Symbols." ("packed", the default),
with a space before each name ("inline": "Tags: bar chart; card file box; ..."), or with each name on a line of its
own ("lines").

Why packed: a byte-level BPE tokenizer splits a word differently after a space than at a line's start, and an
answer starts its turn at a line's start. In "Tags: dango" the name is " dang"+"o", the answer "dango" is
"d"+"ango": the LLM has to respell the name from one set of tokens into another, and a 135M model misspells rare
names in about one naming answer in twenty ("dangling dango", "videoocassette"; docs/stage23_style_shift.md, K1).
After ";" with no space a word starts as at a line's start, so a packed name has the answer's tokens: answers that
are no training name 15 -> 2 in 300, yes/no level (83.0% against inline's 82.7%; docs/stage23_ceiling.md). Names
on lines of their own spell right too, but answered yes/no about 2 points lower (78.7-79.3% against 80.7-81.7%),
so the loss came from the line structure, not from the tokens. Groups stay after a space in every layout, as a
yes/no question names them.

Style views (stage1_clip/style_views.py; model.tower_tags.style_views, by default the CLIP's eval.style_views): an
image's embedding for its tags is the mean over its plain crop and fixed renderings, as eval-clip and the tower
baseline read it, so the tags are the tower baseline's answers; tagging then needs the image's pixels.

Training tags can be drawn from a noisy embedding (`noise`, model.tower_tags.train_noise): on the trained styles the
tower's first name is almost always right, on a new artist's drawings often second to fifth. Noise of standard
deviation s on every coordinate adds noise of that deviation to each image-name cosine similarity (the names are
unit vectors). Measured at Twemoji's own first-tag rate (s = 0.15), it moved the model's trust from the tags to its
image tokens and lowered every held-out score (docs/stage23_style_shift.md, C2): the recipes leave it off.
"""
import torch
import torch.nn.functional as F
from torch import nn

from mmtool.errors import MmtoolError
from stage1_clip.evaluate import probabilities_from_names
from stage1_clip.style_views import check_views
from stage2_projector.llm import IMAGE_TOKEN


LAYOUTS = ("packed", "inline", "lines")
DEFAULT_LAYOUT = LAYOUTS[0]


class TowerTags(nn.Module):
    def __init__(self, names: list[str], groups: list[str], embed_dim: int, name_count: int, group_count: int,
                 name_groups: list[int] | None = None, scale: float | None = None, layout: str = DEFAULT_LAYOUT,
                 style_views: list[str] = ()):
        """name_groups: each name's index in `groups` (-1: none) to rank groups through the names, at the CLIP's
        logit `scale`; None: groups ranked by their own embeddings. layout: how a tag line is written (LAYOUTS).
        style_views: the renderings an image's embedding is averaged over (none: its plain crop)."""
        super().__init__()
        if layout not in LAYOUTS:
            raise MmtoolError(f"model.tower_tags.layout: one of {', '.join(LAYOUTS)}, got {layout!r}")
        try:
            check_views(list(style_views))
        except ValueError as err:
            raise MmtoolError(f"model.tower_tags.style_views: {err}") from None
        self.layout, self.style_views = layout, list(style_views)
        self.names, self.groups = list(names), list(groups)
        self.name_count, self.group_count = min(name_count, len(names)), min(group_count, len(groups))
        self.name_groups, self.scale = name_groups, scale
        # The names with a group and their group indices, fixed with the vocabulary (not rebuilt per batch).
        self.grouped_names = [i for i, group in enumerate(name_groups or []) if group >= 0]
        self.register_buffer("grouped_name_groups", torch.tensor([name_groups[i] for i in self.grouped_names],
                                                                 dtype=torch.long), persistent=False)
        # Filled by the builder (stage3_llm/tower.py) or a checkpoint's state dict.
        self.register_buffer("name_embeddings", torch.zeros(len(names), embed_dim))  # [V, D] unit rows
        self.register_buffer("group_embeddings", torch.zeros(len(groups), embed_dim))  # [G, D] unit rows

    def record(self) -> dict:
        """What a checkpoint's record keeps to rebuild this module before its buffers load."""
        through_names = {"name_groups": self.name_groups, "scale": self.scale} if self.name_groups else {}
        return {"names": self.names, "groups": self.groups, "name_count": self.name_count,
                "group_count": self.group_count, "layout": self.layout, "style_views": self.style_views,
                **through_names}

    @classmethod
    def from_record(cls, record: dict, embed_dim: int) -> "TowerTags":
        # Older records rank groups by prompts, write their tags inline and embed the plain crop.
        return cls(record["names"], record["groups"], embed_dim, record["name_count"], record["group_count"],
                   record.get("name_groups"), record.get("scale"), record.get("layout", "inline"),
                   record.get("style_views", []))

    @torch.no_grad()
    def lines(self, image_embeddings: torch.Tensor, noise: float = 0.0,
              generator: torch.Generator | None = None) -> list[str]:
        """[B, D] unit image embeddings -> one tag line per image: nearest names, then the best-scoring groups
        (group_scores), best first; ranked from unit(embedding + noise * N(0, 1)) when `noise` is set (module doc)."""
        image_embeddings = image_embeddings.to(self.name_embeddings.dtype)
        if noise > 0:
            draws = torch.randn(image_embeddings.shape, generator=generator, dtype=image_embeddings.dtype)  # [B, D]
            image_embeddings = F.normalize(image_embeddings + noise * draws.to(image_embeddings.device), dim=-1)
        names = (image_embeddings @ self.name_embeddings.T).topk(self.name_count, dim=1).indices  # [B, k]
        groups = self.group_scores(image_embeddings).topk(self.group_count, dim=1).indices  # [B, g]
        return [tag_line([self.names[i] for i in name_row.tolist()], [self.groups[i] for i in group_row.tolist()],
                         self.layout) for name_row, group_row in zip(names, groups)]

    def group_scores(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """[B, D] -> [B, G]: P(group) through the names, or the similarity to each group's own embedding."""
        if not self.name_groups:
            return image_embeddings @ self.group_embeddings.T  # [B, G]
        return probabilities_from_names(image_embeddings, self.name_embeddings[self.grouped_names],
                                        self.grouped_name_groups, len(self.groups), self.scale)  # [B, G]


def tag_line(names: list[str], groups: list[str], layout: str = DEFAULT_LAYOUT) -> str:
    """The tags as text: "Tags:a;b. Groups: x; y." packed, "Tags: a; b. Groups: x; y." inline,
    "Tags:\\na\\nb\\nGroups: x; y." in lines."""
    group_part = [f"Groups: {'; '.join(groups)}."] if groups else []
    if not names:
        return " ".join(group_part)
    if layout == "packed":
        return " ".join([f"Tags:{';'.join(names)}.", *group_part])
    if layout == "inline":
        return " ".join([f"Tags: {'; '.join(names)}.", *group_part])
    return "\n".join(["Tags:", *names, *group_part])


def tagged(content: str, line: str) -> str:
    """A user turn's text with the tag line right after its `<image>` marker (unchanged without one)."""
    return content.replace(IMAGE_TOKEN, f"{IMAGE_TOKEN}\n{line}", 1)
