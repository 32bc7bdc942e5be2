"""The shard sample contract every mmtool reader relies on.

A sample is a group of tar members sharing a key: `<key>.png` (or .jpg/.jpeg/.webp) holds the image, `<key>.txt`
the canonical caption and `<key>.json` a dict with `captions` (all phrasings, the first canonical) plus label fields
(`group`, `subgroup`, `name`, `keywords`, `concept`, ...). img2dataset shards (jpg + txt + json without `captions`)
read as captions = [txt].
"""
import json
from dataclasses import dataclass

from mmtool.data.reading.images import BadSample

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")


@dataclass
class RawSample:
    """A sample whose fields are parsed but whose image is still encoded bytes."""
    key: str
    url: str  # the shard it came from, for messages
    image: bytes
    captions: list[str]  # first = canonical
    meta: dict  # the json member (empty when absent)


def encode_sample(key: str, image: bytes, captions: list[str], labels: dict, image_ext: str = "png") -> dict:
    """Tar members for one sample as ShardWriter(encoder=False) expects them."""
    if "." in key:
        raise ValueError(f"sample key {key!r} contains a dot (webdataset splits keys at the first dot)")
    meta = {"captions": captions, **labels}
    return {"__key__": key, image_ext: image, "txt": captions[0].encode("utf-8"),
            "json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}


def parse_raw(members: dict, url: str) -> RawSample:
    """Reads the fields of one tar group without decoding its image; raises BadSample."""
    image = next((members[ext] for ext in IMAGE_EXTENSIONS if ext in members), None)
    if not image:
        raise BadSample("missing_image", members["__key__"])
    meta = {}
    if "json" in members:
        try:
            meta = json.loads(members["json"])
        except ValueError as err:
            raise BadSample("bad_json", f"{members['__key__']}: {err}") from err
        if not isinstance(meta, dict):
            raise BadSample("bad_json", f"{members['__key__']}: not an object")
    listed = meta.get("captions")
    captions = [c.strip() for c in listed if isinstance(c, str) and c.strip()] if isinstance(listed, list) else []
    if not captions:
        text = members.get("txt", b"").decode("utf-8", errors="replace").strip()
        captions = [text] if text else []
    if not captions:
        raise BadSample("empty_caption", members["__key__"])
    return RawSample(members["__key__"], url, image, captions, meta)
