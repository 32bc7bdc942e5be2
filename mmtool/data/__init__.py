"""Data: `reading/` is the pipeline every stage trains from (shards, samples, images, augmentation, loaders);
`building/` makes the datasets it reads (emoji, OpenClipart, your JSONL, instruction conversations, shard writer)."""
