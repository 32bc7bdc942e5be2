"""Stage 3: LoRA instruction tuning of the LLaVA-style model (not yet implemented)."""
