"""Building datasets as webdataset shards (emoji, OpenClipart, JSONL pairs) and instruction conversations."""
