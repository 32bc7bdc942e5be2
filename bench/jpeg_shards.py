"""Web-style shards for loader benchmarks: mmtool's PNG drawings re-encoded as img2dataset writes them.

    python bench/jpeg_shards.py data/emoji5/train-00000{0,1,2}.tar --out /tmp/jpeg_shards --size 256 --samples 60000

img2dataset (what LAION / DataComp users have) stores each image as a JPEG resized to 256 px with `.txt` and
`.json` beside it; decoding such a JPEG costs the loader several times a 128 px PNG. The drawings are flattened on
white, resized (bicubic), JPEG-encoded at quality 90 and repeated under new keys until `--samples`, 1,000 a shard.
Both mmtool and open_clip read these shards as they are.
"""
import argparse
import io
import json
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

SHARD_SAMPLES = 1000


def read_samples(urls: list[str]) -> list[tuple[str, bytes, str]]:
    """(key, png bytes, first caption) for every sample of the shards."""
    members: dict[str, dict[str, bytes]] = {}
    for url in urls:
        with tarfile.open(url) as tar:
            for member in tar:
                if member.isfile():
                    key, _, ext = member.name.partition(".")
                    members.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return [(key, parts["png"], parts["txt"].decode()) for key, parts in members.items()
            if "png" in parts and "txt" in parts]


def to_jpeg(png: bytes, size: int) -> bytes:
    image = Image.open(io.BytesIO(png)).convert("RGBA")
    white = Image.new("RGBA", image.size, "white")
    rgb = Image.alpha_composite(white, image).convert("RGB").resize((size, size), Image.BICUBIC)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=90)
    return out.getvalue()


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, samples: list[tuple[str, bytes, str]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, jpeg, caption in samples:
            add_file(tar, f"{key}.jpg", jpeg)
            add_file(tar, f"{key}.txt", caption.encode())
            add_file(tar, f"{key}.json", json.dumps({"caption": caption}).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", nargs="+", help="mmtool shards (PNG + txt)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=60_000, help="written in all (the sources repeated)")
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    started = time.perf_counter()
    sources = read_samples(args.shards)
    with ProcessPoolExecutor(args.workers) as pool:
        jpegs = list(pool.map(to_jpeg, [png for _, png, _ in sources], [args.size] * len(sources), chunksize=64))
    encoded = [(key, jpeg, caption) for (key, _, caption), jpeg in zip(sources, jpegs)]
    samples = [(f"{encoded[i % len(encoded)][0]}_r{i // len(encoded)}", *encoded[i % len(encoded)][1:])
               for i in range(args.samples)]
    args.out.mkdir(parents=True, exist_ok=True)
    shards = [samples[i:i + SHARD_SAMPLES] for i in range(0, len(samples), SHARD_SAMPLES)]
    with ProcessPoolExecutor(args.workers) as pool:
        list(pool.map(write_shard, [args.out / f"train-{n:06d}.tar" for n in range(len(shards))], shards))
    mean_kb = sum(len(j) for j in jpegs) / len(jpegs) / 1024
    print(f"{len(samples)} samples ({len(sources)} distinct drawings, {args.size} px JPEG, {mean_kb:.1f} KB mean) "
          f"in {len(shards)} shards under {args.out}, {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
