"""The export and image-search commands of `mmtool` (registered on the main app by mmtool/cli.py)."""
from pathlib import Path
from typing import Annotated

import typer

FormatOption = Annotated[str, typer.Option("--format", help="hf | onnx | safetensors")]
OutOption = Annotated[Path, typer.Option(help="Export folder (created; must not exist or be empty)")]


def export_vision(checkpoint: Annotated[Path, typer.Argument(help="clip.pt or clip.safetensors")],
                  out: OutOption, fmt: FormatOption = "hf"):
    """Export the image encoder (tower + projection): hf = CLIPVisionModelWithProjection + image processor (ViT
    towers); onnx = vision.onnx (dynamic batch); safetensors = weights + config.json (any tower)."""
    from mmtool.export.run import export

    export(checkpoint, "vision", fmt, out)
    print(f"wrote {out}")


def export_clip(checkpoint: Annotated[Path, typer.Argument(help="clip.pt or clip.safetensors")],
                out: OutOption, fmt: FormatOption = "hf"):
    """Export both encoders: hf = CLIPModel + tokenizer (same ids as mmtool's) + image processor; onnx =
    vision.onnx + text.onnx + tokenizer; safetensors = weights + config.json + tokenizer (any towers)."""
    from mmtool.export.run import export

    export(checkpoint, "clip", fmt, out)
    print(f"wrote {out}")


def add_retrieval_commands(app: typer.Typer) -> None:
    app.command("export-vision")(export_vision)
    app.command("export-clip")(export_clip)
