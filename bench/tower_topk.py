"""What tower tags can give stage 3: the CLIP tower's own top-k answers on a split's questions, as a table.

For naming and group questions: R@k of the reference among the vocabulary. For yes/no: accuracy of the rule
"Yes. exactly when the premise is among the tower's top k", the best any reader of a k-name tag line could do
from the tags alone. The vocabulary is the training conversations' names and groups (what `model.tower_tags`
uses), or with `--vocabulary` omitted the scored file's own (what the tower baseline ranks, so that new concepts'
names can be scored), embedded and ranked as the tower baseline ranks them (groups through their names where the
conversations pair names with groups); images are read in the CLIP's eval.style_views.

    python bench/tower_topk.py --clip runs/pipeline/clip/clip.pt --vocabulary runs/pipeline/instruct/train.json \\
        --data runs/pipeline/instruct/heldout_train.json --sample 3000
"""
import argparse
import random
from collections import defaultdict

from stage1_clip.checkpoint import load_clip
from stage3_llm.conversations import read_conversations
from stage3_llm.tower import candidates, name_group_pairs, parse_question, tower_scores

KS = (1, 3, 5, 10, 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", required=True)
    parser.add_argument("--vocabulary", help="training conversations (names and groups); default: the --data file's")
    parser.add_argument("--data", required=True, help="the conversations whose first question is scored")
    parser.add_argument("--sample", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    clip = load_clip(args.clip)
    conversations, source = read_conversations(args.data)
    source_conversations = read_conversations(args.vocabulary)[0] if args.vocabulary else conversations
    vocabulary = candidates(source_conversations)
    conversations = random.Random(args.seed).sample(conversations, min(args.sample, len(conversations)))
    images = sorted({c.image for c in conversations})
    row_of = {image: row for row, image in enumerate(images)}
    scores = tower_scores(clip, images, source, vocabulary, name_group_pairs(source_conversations),
                          {"name", "group"})  # kind -> [I, C]
    ranking = {kind: kind_scores.argsort(1, descending=True) for kind, kind_scores in scores.items()}  # best first
    index_of = {kind: {name: i for i, name in enumerate(names)} for kind, names in vocabulary.items()}

    hits = defaultdict(list)  # (kind, question type, k) -> [bool]
    for conversation in conversations:
        question, answer = conversation.turns[0]["content"], conversation.turns[1]["content"]
        parsed = parse_question(question)
        if parsed is None:
            continue
        target = parsed.premise if parsed.premise is not None else answer
        if target not in index_of[parsed.kind]:
            continue  # a concept outside the vocabulary: no tag can name it
        rank = int((ranking[parsed.kind][row_of[conversation.image]] == index_of[parsed.kind][target]).nonzero()[0])
        kind = "open" if parsed.premise is None else "yes/no"
        for k in KS:
            hit = rank < k if parsed.premise is None else (rank < k) == (answer == "Yes.")
            hits[(parsed.kind, kind, k)].append(hit)
    print(f"{'question':<16}{'n':>6}" + "".join(f"{f'k={k}':>9}" for k in KS))
    for kind in ("name", "group"):
        for question in ("open", "yes/no"):
            rows = [hits[(kind, question, k)] for k in KS]
            if rows[0]:
                print(f"{kind + ' ' + question:<16}{len(rows[0]):>6}"
                      + "".join(f"{100 * sum(r) / len(r):>8.1f}%" for r in rows))


if __name__ == "__main__":
    main()
