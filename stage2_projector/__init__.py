"""Stage 2: align a frozen image tower to an LLM through a projector (not yet implemented)."""
