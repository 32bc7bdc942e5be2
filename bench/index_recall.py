"""Text->image recall through an image index vs `mmtool eval-clip`'s in-memory figure, same model and split.

    .venv/bin/python bench/index_recall.py                                  # demo checkpoint, emoji val split
    .venv/bin/python bench/index_recall.py --checkpoint ckpt/clip/clip.pt --data 'data/emoji/val-*.tar'

The index drops images whose file bytes repeat an indexed one; a query whose own image was dropped can only be
answered by the kept copy, which carries the first sample's caption. Duplicates are counted in the output.
"""
import argparse
import tempfile
from pathlib import Path

from mmtool.data.reading.loader import make_eval_set, resolve_shards
from mmtool.index import ImageIndex
from stage1_clip.checkpoint import load_clip
from stage1_clip.evaluate import evaluate_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="ckpt/demo/clip.pt")
    parser.add_argument("--data", default="data/emoji/val-*.tar")
    args = parser.parse_args()
    bundle = load_clip(args.checkpoint)
    cfg = bundle.config
    eval_set = make_eval_set(resolve_shards(args.data), cfg.model.vision.image_size, cfg.data.label_fields)
    expected = evaluate_clip(bundle.model, bundle.tokenize, eval_set, cfg.eval.templates, cfg.eval.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        index, report = ImageIndex.build(args.data, args.checkpoint, Path(tmp) / "index", progress=False)
        captions = eval_set["caption"]
        hits = [index.search(text=caption, k=10) for caption in captions]
    print(f"{args.checkpoint} on {args.data}: {len(captions)} samples, {len(index.items)} indexed "
          f"({report.duplicates} duplicate files skipped)")
    print(f"{'metric':<20}{'eval-clip':>10}{'index':>10}")
    for k in (1, 5, 10):
        found = sum(any(h.caption == c for h in ranked[:k]) for ranked, c in zip(hits, captions))
        print(f"{f'text_to_image_R@{k}':<20}{expected[f'text_to_image_R@{k}']:>10.4f}{found / len(captions):>10.4f}")


if __name__ == "__main__":
    main()
