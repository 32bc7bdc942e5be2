"""Openclipart (Debian's openclipart-png + openclipart-svg) as train/val shards: noisy, web-like captions.

Each PNG under png/<category>/... has an SVG twin under svg/ whose metadata holds a title and keywords.
Symlinked PNGs (the same drawing filed under a second category) are left out so no drawing is read twice.
"""
import html
import io
import os
import re
import time
from collections import Counter
from multiprocessing import Pool
from pathlib import Path

from PIL import Image

from mmtool.data.building.shard_writer import SplitWriter, hash_split, write_meta
from mmtool.data.reading.images import BadSample, open_image, pad_to_square
from mmtool.data.reading.sample_format import encode_sample
from mmtool.errors import MmtoolError
from mmtool.progress import progress

OPENCLIPART = Path("/usr/share/openclipart")
MIN_SIDE = 16  # drawings whose longer side is shorter than this are icons too small to say anything
COLLECTION_SIZE = 10  # a title shared by this many drawings names their collection ("gramastar"), not them
# Keywords that describe the file or the upload rather than the drawing.
NOISE_KEYWORDS = {"", "hash", "magick", "unsorted", "theme", "lemon theme icon", "clip art", "clipart", "image",
                  "picture", "svg", "png", "media", "public domain", "externalsource", "openclipart"}


def svg_metadata(svg: Path) -> tuple[str, list[str]]:
    """(title, keywords) from the SVG's <cc:Work> block; empty when the file or block is missing."""
    try:
        text = svg.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "", []
    work = re.search(r"<cc:Work\b.*?</cc:Work>", text, re.S)
    if not work:
        return "", []
    block = work.group(0)
    creator = re.search(r"<dc:creator>.*?<dc:title>(.*?)</dc:title>", block, re.S)
    without_agents = re.sub(r"<cc:Agent\b.*?</cc:Agent>", "", block, flags=re.S)
    title = re.search(r"<dc:title>(.*?)</dc:title>", without_agents, re.S)
    subject = re.search(r"<dc:subject>(.*?)</dc:subject>", block, re.S)
    noise = NOISE_KEYWORDS | ({clean_text(creator.group(1)).lower()} if creator else set())
    keywords = [clean_text(k).lower().replace("_", " ")
                for k in re.findall(r"<rdf:li>(.*?)</rdf:li>", subject.group(1) if subject else "", re.S)]
    # "hash(0x8a4d498)", URLs and bare numbers are upload debris.
    keywords = [k for k in dict.fromkeys(keywords) if k not in noise and not re.match(r"hash\b|http|\d+$", k)]
    return clean_text(title.group(1)) if title else "", keywords


def clean_text(text: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]*>", " ", text)).split())


def clean_title(title: str) -> str:
    """Drops upload boilerplate: "Clipart by Nicu Buculei - head1" -> "head1", "(Wed Aug 25 ... 2004)" -> ""."""
    title = re.sub(r"^clip ?art by .*? - ", "", title, flags=re.I)
    title = re.sub(r"\s*\([^)]*\d{4}\)", "", title)
    return " ".join(title.replace("_", " ").split())


def title_from_filename(stem: str) -> str:
    """'chemistry_flask_matthew__02' -> 'chemistry flask matthew' (names carry a truncated author)."""
    return " ".join(re.sub(r"_\d+$", "", stem).replace("-", " ").replace("_", " ").split())


def clipart_captions(title: str, keywords: list[str], category: list[str]) -> list[str]:
    """Several phrasings, the first canonical; `category` is the folder path, e.g. ["science", "medicine"]."""
    place = " ".join(category).replace("_", " ")
    phrasings = [f"clip art of {title}", title, f"a {place} clip art of {title}", f"a drawing of {title}"]
    if keywords:
        phrasings += [f"{title}: {', '.join(keywords[:5])}", f"clip art about {', '.join(keywords[:3])}"]
    return list(dict.fromkeys(phrasings))


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def drawing_titles(root: Path, rels: list[str]) -> list[tuple[str, list[str]]]:
    """(title, keywords) per PNG; collection titles get the drawing's file name in front."""
    metadata = [svg_metadata(Path(root, "svg", rel).with_suffix(".svg")) for rel in rels]
    titles = [clean_title(title) for title, _ in metadata]
    shared = Counter(titles)
    named = []
    for rel, title, (_, keywords) in zip(rels, titles, metadata):
        from_file = title_from_filename(Path(rel).stem)
        if not title:
            title = from_file
        elif shared[title] >= COLLECTION_SIZE and not words(title) <= words(from_file):
            title = f"{from_file}, {title}"
        named.append((title, keywords))
    return named


def prepare(task: tuple[int, str, str, int, str, list[str]]) -> tuple[str, dict] | str:
    """(split group, encoded sample) for one PNG, or the reason it is skipped. Runs in a worker process."""
    index, rel, root, image_size, title, keywords = task
    png_path = Path(root, "png", rel)
    try:
        image = open_image(png_path.read_bytes())
    except OSError:
        return "unreadable_file"
    except BadSample as err:
        return err.reason
    if max(image.size) < MIN_SIDE:
        return "too_small"
    square = pad_to_square(image.convert("RGBA")).resize((image_size, image_size), Image.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    square.save(buffer, "PNG")

    category = Path(rel).parent.parts
    labels = {"group": category[0], "subgroup": category[1] if len(category) > 1 else category[0],
              "category": "/".join(category), "name": title, "concept": title, "keywords": keywords,
              "style": "openclipart", "file": rel}
    key = f"oc{index:05d}_" + re.sub(r"[^A-Za-z0-9_-]+", "_", png_path.stem)[:60]
    base = re.sub(r"_\d+$", "", png_path.stem)  # numbered versions of one drawing share a split
    return base, encode_sample(key, buffer.getvalue(), clipart_captions(title, keywords, list(category)), labels)


def list_pngs(root: Path) -> list[str]:
    """Paths of the real (not symlinked) PNGs relative to root/png, sorted."""
    png_root = root / "png"
    found = []
    for folder, _, files in os.walk(png_root):
        found += [os.path.relpath(os.path.join(folder, f), png_root) for f in files
                  if f.lower().endswith(".png") and not os.path.islink(os.path.join(folder, f))]
    return sorted(found)


def build_openclipart(out: Path, image_size: int = 128, val_fraction: float = 0.1, seed: int = 0,
                      limit: int | None = None, shard_size: int = 1000, processes: int | None = None,
                      root: Path = OPENCLIPART) -> dict:
    """Writes out/{train,val}-%06d.tar and out/meta.json; returns counts, skips by reason and timing.

    Images are padded square on transparency and resized to image_size; bombs (> images.MAX_PIXELS), unreadable
    and tiny files are skipped and counted. `limit` keeps the first N PNGs in path order. The split hashes the
    file name without its version number, so "x_01" and "x_02" land together.
    """
    if not (root / "png").is_dir():
        raise MmtoolError(f"{root / 'png'} is missing: apt-get install -y openclipart-png openclipart-svg")
    start = time.perf_counter()
    rels = list_pngs(root)
    # Titles are judged over the whole collection, so a `limit` subset gets the same captions.
    tasks = [(i, rel, str(root), image_size, title, keywords)
             for i, (rel, (title, keywords)) in enumerate(zip(rels, drawing_titles(root, rels)))][:limit]
    skipped = Counter()
    with SplitWriter(out, shard_size) as shards, Pool(processes or os.cpu_count()) as pool:
        # imap keeps the input order: shards come out identical whatever the process count.
        for result in progress(pool.imap(prepare, tasks, chunksize=8), total=len(tasks), desc="openclipart",
                               unit="img"):
            if isinstance(result, str):
                skipped[result] += 1
            else:
                base, sample = result
                shards.write(hash_split(base, val_fraction, seed), sample)
        written = shards.close()
    write_meta(out, "openclipart", written, image_size=image_size, val_fraction=val_fraction, seed=seed,
               skipped=dict(skipped), source=str(root))
    return {"out": str(out), "samples": {split: info["samples"] for split, info in written.items()},
            "skipped": dict(skipped), "seconds": round(time.perf_counter() - start, 1)}
