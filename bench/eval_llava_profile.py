"""Where `mmtool eval-llava`'s time goes: one run under cProfile, its wall time split into the parts that matter.

    python bench/eval_llava_profile.py --model runs/pipeline/llava --data runs/pipeline/instruct/heldout_train.json \\
        --per-task 30 --batch-size 16 --precision fp32
"""
import argparse
import cProfile
import pstats
import time
from pathlib import Path

from stage3_llm.eval_run import EvalOptions, run_eval

# (row, a function's file suffix and name): cumulative seconds of each
PARTS = (("load the model (LLM included)", "stage3_llm/checkpoint.py", "load_finetuned"),
         ("answer (all generation)", "stage3_llm/evaluate.py", "answer_questions"),
         ("  prefill (prompt forward)", "transformers/generation/utils.py", "_prefill"),
         ("  LoRA layers", "peft/tuners/lora/layer.py", "forward"),
         ("tower baseline", "stage3_llm/evaluate.py", "add_tower_answers"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--per-task", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--precision", default="bf16", help="the LLM's when answering: bf16 or fp32")
    args = parser.parse_args()

    options = EvalOptions(per_task=args.per_task, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                          precision=args.precision)
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.runcall(run_eval, Path(args.model), Path(args.data), None, options)
    wall = time.perf_counter() - start
    stats = pstats.Stats(profile).stats  # (file, line, name) -> (calls, calls, own s, cumulative s, callers)
    print(f"{'part':<34}{'seconds':>9}{'share':>8}")
    print(f"{'eval-llava (wall)':<34}{wall:>9.1f}{100:>7.0f}%")
    for row, suffix, name in PARTS:
        seconds = max((entry[3] for (file, _, function), entry in stats.items()
                       if function == name and file.endswith(suffix)), default=0.0)
        print(f"{row:<34}{seconds:>9.1f}{100 * seconds / wall:>7.0f}%")


if __name__ == "__main__":
    main()
