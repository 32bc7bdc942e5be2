"""Tiny in-memory tokenizers (and, for training tests, a tiny Llama) with chat templates; nothing is downloaded."""
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
ZEPHYR_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
WORD_SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<image>"]


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """One id per whitespace/punctuation-separated word (specials 0-4, then `words` in order): easy to hand-check."""
    vocab = {token: index for index, token in enumerate(WORD_SPECIALS + ["system", "user", "assistant"] + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                        eos_token="<|im_end|>", bos_token="<|im_start|>")
    tokenizer.add_tokens(WORD_SPECIALS, special_tokens=True)
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def bpe_tokenizer(corpus: list[str], vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `corpus`, with a Zephyr-style template (bos, role tags, eos ends a turn)."""
    specials = ["<pad>", "<s>", "</s>", "<image>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>")
    tokenizer.add_tokens(specials, special_tokens=True)
    tokenizer.chat_template = ZEPHYR_TEMPLATE
    return tokenizer
