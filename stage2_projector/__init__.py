"""Stage 2: align a frozen image tower to a frozen LLM by training a projector on caption pairs."""
