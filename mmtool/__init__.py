"""mmtool: CLIP pretraining and LLaVA-style alignment in one toolkit."""
