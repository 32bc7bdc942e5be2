"""A stage-3 model's answers set beside its tower's, question by question, from an `eval-llava --out-json` report.

Per task: how often the model gives the tower's answer, and who is right where they differ. For naming, the
answers that are no name of the vocabulary (misspelled copies) are counted too. With --clip, the tower is scored
again in that CLIP's eval.style_views (or --views), for a report written before the tower read views.

    python bench/model_vs_tower.py --report runs/s29/views/eval300_heldout_train.json \\
        --data runs/pipeline/instruct/heldout_train.json --vocabulary runs/pipeline/instruct/train.json \\
        --clip runs/pipeline/clip/clip.pt --views plain,grayscale,outline,contour,stroke
"""
import argparse
import json
from collections import Counter

from stage1_clip.checkpoint import load_clip
from stage3_llm.conversations import read_conversations
from stage3_llm.evaluate import add_tower_answers
from stage3_llm.tower import candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", required=True, help="eval-llava's JSON report")
    parser.add_argument("--data", required=True, help="the conversations it evaluated")
    parser.add_argument("--vocabulary", help="training conversations: naming answers outside their names are counted")
    parser.add_argument("--clip", help="score the tower again with this CLIP instead of the report's tower answers")
    parser.add_argument("--views", help="comma-separated style views for --clip (default: its eval.style_views)")
    args = parser.parse_args()

    answers = json.load(open(args.report))["answers"]
    towers = [answer.get("tower") for answer in answers]
    if args.clip:
        conversations, source = read_conversations(args.data)
        clip = load_clip(args.clip)
        if args.views:
            clip.config.eval.style_views = args.views.split(",")
        rescored = [{key: answer[key] for key in ("task", "image", "question", "reference")} for answer in answers]
        add_tower_answers(rescored, clip, conversations, source)
        towers = [result["tower"] for result in rescored]
    names = set(candidates(read_conversations(args.vocabulary)[0])["name"]) if args.vocabulary else None

    for task in sorted({answer["task"] for answer in answers}):
        pairs = [(answer, tower) for answer, tower in zip(answers, towers) if answer["task"] == task and tower]
        if not pairs:
            continue
        same = sum(answer["answer"] == tower["answer"] for answer, tower in pairs)
        cells = Counter((bool(answer["exact_match"]), bool(tower["correct"])) for answer, tower in pairs)
        print(f"{task}: {len(pairs)} questions, the tower's answer {same} times; model right / tower right: "
              f"both {cells[True, True]}, model only {cells[True, False]}, tower only {cells[False, True]}, "
              f"neither {cells[False, False]}")
        if names is not None and task == "what":
            lost = [answer for answer, tower in pairs if answer["answer"] != tower["answer"] and tower["correct"]]
            print(f"  answers that are no training name: {sum(a['answer'] not in names for a, _ in pairs)}; "
                  f"of the {len(lost)} the tower alone got right: {sum(a['answer'] not in names for a in lost)}")


if __name__ == "__main__":
    main()
