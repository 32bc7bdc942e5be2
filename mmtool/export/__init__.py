"""Exporting trained towers to formats other tools read: Hugging Face folders, ONNX, safetensors."""
