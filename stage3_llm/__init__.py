"""Stage 3: instruction tuning of the stage-2 model on LLaVA conversations (LoRA or full), with its evaluation."""
