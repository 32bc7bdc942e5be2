"""How often the first group of stage 3's tower tags is right, per split, at several softmax scales.

The tags rank groups through the training conversations' names (stage2_projector/tower_tags.py): a group's score is
the softmax mass of its names at the CLIP's own logit scale. This prints that first group's accuracy on each split's
group questions at the CLIP's scale and at others, and ranked by the groups' prompt ensembles instead. The model
answers a group question with its first group tag (docs/stage23_results.md, "Why group on new concepts ...").

    python bench/tag_groups.py --clip runs/pipeline/clip/clip.pt --instructions runs/pipeline/instruct
"""
import argparse

import torch

from mmtool.data.reading.images import eval_transform, load_image
from stage1_clip.checkpoint import load_clip
from stage1_clip.evaluate import embed_images
from stage3_llm.conversations import read_conversations
from stage3_llm.tower import build_tower_tags, candidate_embeddings

SCALES = (100, 50, 30, 20, 10, 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", required=True)
    parser.add_argument("--instructions", required=True, help="folder of train.json and the split files")
    parser.add_argument("--splits", nargs="+", default=["train", "val", "heldout_train", "heldout_val"])
    parser.add_argument("--per-split", type=int, default=600, help="group questions per split (the file's first)")
    args = parser.parse_args()

    clip = load_clip(args.clip)
    tags = build_tower_tags(clip, read_conversations(f"{args.instructions}/train.json")[0], names=5, groups=3)
    own_scale = tags.scale
    prompts = candidate_embeddings(clip, tags.groups, "group")  # [G, D]
    size = clip.config.model.vision.image_size
    header = f"{'split':<15}{'n':>5}{f'{own_scale:.0f} (own)':>10}" + "".join(f"{s:>7}" for s in SCALES)
    print(header + f"{'prompts':>9}")
    for split in args.splits:
        conversations, source = read_conversations(f"{args.instructions}/{split}.json")
        asked = [(c.image, c.turns[1]["content"]) for c in conversations
                 if c.extra.get("task") == "group"][:args.per_split]
        pixels = torch.stack([eval_transform(load_image(source.read(image)), size) for image, _ in asked])
        image_emb = embed_images(clip.model, pixels, clip.config.eval.batch_size)  # [N, D]
        truth = torch.tensor([tags.groups.index(group) for _, group in asked])  # [N]
        row = []
        for scale in (own_scale, *SCALES):
            tags.scale = scale
            row.append(100 * (tags.group_scores(image_emb).argmax(1) == truth).float().mean().item())
        by_prompts = 100 * ((image_emb @ prompts.T).argmax(1) == truth).float().mean().item()
        print(f"{split:<15}{len(asked):>5}{row[0]:>10.1f}" + "".join(f"{v:>7.1f}" for v in row[1:])
              + f"{by_prompts:>9.1f}")


if __name__ == "__main__":
    main()
