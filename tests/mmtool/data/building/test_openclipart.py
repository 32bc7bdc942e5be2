"""The openclipart builder on a small subset (needs Debian's openclipart-png and openclipart-svg)."""
from collections import Counter

import pytest

from mmtool.data.building.openclipart import OPENCLIPART, build_openclipart, clean_title, svg_metadata
from mmtool.data.reading.loader import resolve_shards
from mmtool.data.reading.sample_stream import parsed_samples

pytestmark = pytest.mark.skipif(not (OPENCLIPART / "svg").is_dir(),
                                reason="apt-get install -y openclipart-png openclipart-svg")


@pytest.mark.slow
def test_small_build_has_captions_labels_and_a_clean_split(tmp_path):
    stats = build_openclipart(tmp_path, image_size=32, val_fraction=0.3, limit=40, shard_size=25, processes=2)
    assert sum(stats["samples"].values()) + sum(stats["skipped"].values()) == 40
    split_of = {}
    for split in stats["samples"]:
        for sample in parsed_samples(resolve_shards(str(tmp_path / f"{split}-*.tar")), Counter()):
            assert sample.captions[0].startswith("clip art of ") and all(sample.captions)
            assert sample.meta["group"] == sample.meta["file"].split("/")[0]
            base = sample.meta["file"].rsplit("/", 1)[-1].rsplit("_", 1)[0]
            assert split_of.setdefault(base, split) == split


def test_svg_metadata_reads_title_and_keywords_but_not_the_author():
    svg = next(p for p in sorted((OPENCLIPART / "svg" / "science").rglob("*.svg")) if "saturn" in p.name)
    title, keywords = svg_metadata(svg)
    assert title == "Saturn" and "planet" in keywords


def test_title_cleaning():
    assert clean_title("Clipart by Nicu Buculei - arrow08_4") == "arrow08 4"
    assert clean_title("Part of the Flat Icon Collection (Wed Aug 25 23:29:46 2004)") == \
        "Part of the Flat Icon Collection"
