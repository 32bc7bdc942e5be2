"""Image retrieval: a FAISS index of CLIP image embeddings with metadata, searched by text or by image."""
from mmtool.index.image_index import ImageIndex  # noqa: F401 (the Python API: ImageIndex.open(path).search(...))
