"""Group accuracy on a held-out style's new concepts, eval-clip's way and the tower baseline's, as a table.

eval-clip scores every drawing of the shards (group through the set's own captions); the instruction file asks
about one drawing per concept. This prints eval-clip's rule on all drawings, on the instruction file's drawings and
on the rest, then the tower's group answer to the file's group questions ranked through the file's own names (the
tower baseline), through the training names (what stage 3's tags rank by), and through both.

    python bench/new_concept_groups.py --clip runs/pipeline/clip/clip.pt --shards "data/emoji5/heldout_val-*.tar" \\
        --data runs/pipeline/instruct/heldout_val.json --vocabulary runs/pipeline/instruct/train.json
"""
import argparse
import glob
from collections import Counter
from pathlib import Path

import torch

from mmtool.data.reading.loader import make_eval_set
from stage1_clip.checkpoint import load_clip
from stage1_clip.evaluate import correct_from_names, embed_texts, embed_views
from stage3_llm.conversations import read_conversations
from stage3_llm.tower import candidates, name_group_pairs, parse_question, tower_scores


def eval_clip_hits(clip, shards: str) -> tuple[list[str], list[str], torch.Tensor]:
    """(keys, groups, [N] bool): eval-clip's zero-shot group through the names, per drawing of the shards."""
    eval_set = make_eval_set(sorted(glob.glob(shards)), clip.config.model.vision.image_size, as_crops=True)
    image_emb = embed_views(clip.model.inference_copy(), eval_set["crop"], clip.config.eval.style_views,
                            256)  # [N, D]
    text_emb = embed_texts(clip.model, clip.tokenize, eval_set["caption"], 256)  # [N, D]
    labels = eval_set["labels"]["group"]
    hits = correct_from_names(image_emb, text_emb, eval_set["caption"], labels, clip.model.temperature_scale().item())
    return eval_set["key"], labels, hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", required=True)
    parser.add_argument("--shards", required=True, help="the split's shards, as eval-clip reads them")
    parser.add_argument("--data", required=True, help="the split's instruction conversations")
    parser.add_argument("--vocabulary", required=True, help="the training conversations (stage 3's tag names)")
    args = parser.parse_args()

    clip = load_clip(args.clip)
    conversations, source = read_conversations(args.data)
    asked = {Path(c.image).stem for c in conversations if c.image}
    keys, labels, hits = eval_clip_hits(clip, args.shards)
    inside = torch.tensor([key in asked for key in keys])
    print(f"{'eval-clip, group through the names':<52}{'drawings':>9}{'accuracy':>10}")
    for title, mask in (("all drawings", torch.ones_like(inside)), ("the instruction file's", inside),
                        ("the rest", ~inside)):
        print(f"  {title:<50}{int(mask.sum()):>9}{100 * hits[mask].float().mean().item():>9.1f}%")
    rest = Counter(group for group, asked_too in zip(labels, inside.tolist()) if not asked_too)
    print(f"  groups of the rest: {rest.most_common(3)}")

    questions = [(c.image, c.turns[1]["content"]) for c in conversations
                 if (parsed := parse_question(c.turns[0]["content"])) and parsed.kind == "group" and not parsed.premise]
    images = sorted({image for image, _ in questions})
    row_of = {image: row for row, image in enumerate(images)}
    training = read_conversations(args.vocabulary)[0]
    own, trained = candidates(conversations), candidates(training)
    both = {"name": sorted(set(own["name"]) | set(trained["name"])), "group": own["group"]}
    pairs = {**name_group_pairs(training), **name_group_pairs(conversations)}
    print(f"{'tower, the file group questions, through':<52}{'questions':>9}{'accuracy':>10}")
    for title, choices in (("the file's names (the tower baseline)", own), ("the training names (tags)", trained),
                           ("both", both)):
        best = tower_scores(clip, images, source, choices, pairs, {"group"})["group"].argmax(1)  # [I]
        right = sum(choices["group"][int(best[row_of[image]])] == answer for image, answer in questions)
        print(f"  {title:<50}{len(questions):>9}{100 * right / len(questions):>9.1f}%")


if __name__ == "__main__":
    main()
