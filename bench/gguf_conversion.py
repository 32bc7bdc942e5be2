"""The one-time GGUF conversion of the bundled SmolLM2-135M (stage2_projector/gguf_cache.py): transformers' three
parses of the file (tokenizer, config, weights) against mmtool's shared one (`gguf_parsed_once`).

    .venv/bin/python bench/gguf_conversion.py --repeats 3

Each repeat is a new Python process converting into an empty cache folder (transformers and gguf imported first,
outside the timed part); the table gives the wall time of `load_gguf` in seconds. The two ways alternate, so a
busy machine slows both alike.
"""
import argparse
import functools
import tempfile

from alternating import child_seconds, print_medians, time_alternating

WAYS = {"three parses": "contextlib.nullcontext", "one shared parse": "gguf_cache.gguf_parsed_once"}
SETUP = """
import contextlib, torch, transformers, gguf
from stage2_projector import gguf_cache
from stage2_projector.llm import resolve_llm
gguf_cache.gguf_parsed_once = {context}
source = resolve_llm("llama")
"""
TIMED = "gguf_cache.load_gguf(source.path, source.gguf_file, torch.float32)"


def timed_conversion(context: str) -> float:
    with tempfile.TemporaryDirectory() as cache:
        return child_seconds(SETUP.format(context=context), TIMED, {"MMTOOL_CACHE": cache})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    seconds = time_alternating({way: functools.partial(timed_conversion, value) for way, value in WAYS.items()},
                               args.repeats)
    print_medians("conversion", seconds)


if __name__ == "__main__":
    main()
