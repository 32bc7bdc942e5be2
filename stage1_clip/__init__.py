"""Stage 1: contrastive image-text pretraining (CLIP / SigLIP)."""
