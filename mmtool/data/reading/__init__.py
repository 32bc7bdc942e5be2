"""Reading datasets for training and evaluation: shard files, sample format, image transforms, the loaders."""
