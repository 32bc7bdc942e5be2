"""Conversations -> LLM input ids and training labels, with the tokenizer's own chat template.

Masking is correct by construction: the template is rendered on growing prefixes of the conversation, each new
piece of text is tokenized on its own and the ids are concatenated, so every id is known to come from either the
prompt side (user turns, system prompt, assistant headers: label -100) or an assistant answer (label = id). The
answer's supervision runs up to and including the tokenizer's end-of-turn token (eos); whatever the template writes
after it (e.g. a newline) is not supervised.

`<image>` markers in user content become `num_image_tokens` copies of the image token id (one per projected patch
feature, the Hugging Face LLaVA convention).

Truncation (`max_length`) is never silent about losing the point of a sample: when the cut leaves no supervised
token, or falls inside an image's placeholder run, `encode_conversation` raises MmtoolError naming the sample.
"""
from mmtool.errors import MmtoolError

IGNORE_INDEX = -100  # torch cross_entropy's default ignore_index
ROLES = ("system", "user", "assistant")


def encode_conversation(tokenizer, turns: list[dict], image_token: str, num_image_tokens: int, *,
                        max_length: int | None = None, sample: str = "conversation") -> tuple[list[int], list[int]]:
    """(input_ids, labels) for a whole conversation; labels are -100 except on assistant answers."""
    _check_turns(turns, image_token, sample)
    image_id = image_token_id(tokenizer, image_token)
    end_of_turn = tokenizer.eos_token_id
    ids: list[int] = []
    labels: list[int] = []
    for text, supervised in _segments(tokenizer, turns, sample):
        piece = _tokenize(tokenizer, text, image_token, image_id, num_image_tokens)
        ids += piece
        labels += _answer_labels(piece, end_of_turn) if supervised else [IGNORE_INDEX] * len(piece)
    if max_length is not None and len(ids) > max_length:
        if ids[max_length - 1] == image_id and ids[max_length] == image_id:
            raise MmtoolError(f"{sample}: max_length {max_length} cuts through an image's placeholder tokens")
        ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        reason = f" within max_length {max_length}" if max_length is not None else ""
        raise MmtoolError(f"{sample}: no assistant token to train on{reason}")
    return ids, labels


def encode_prompt(tokenizer, turns: list[dict], image_token: str, num_image_tokens: int, *,
                  sample: str = "conversation") -> list[int]:
    """Input ids for generation: the conversation (ending with a user turn) plus the assistant header."""
    _check_turns(turns, image_token, sample)
    if turns[-1]["role"] != "user":
        raise MmtoolError(f"{sample}: a prompt must end with a user turn, not {turns[-1]['role']!r}")
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return _tokenize(tokenizer, text, image_token, image_token_id(tokenizer, image_token), num_image_tokens)


def image_token_id(tokenizer, image_token: str) -> int:
    """The id of the image placeholder token; it must be a single token of the vocabulary."""
    token_id = tokenizer.convert_tokens_to_ids(image_token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise MmtoolError(f"tokenizer has no {image_token!r} token (add it as a special token first)")
    return token_id


def _check_turns(turns: list[dict], image_token: str, sample: str) -> None:
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise MmtoolError(f"{sample}: turn {index} must be {{'role': one of {ROLES}, 'content': str}}, "
                              f"got {turn!r}")
        if turn["role"] == "assistant" and image_token in turn["content"]:
            raise MmtoolError(f"{sample}: turn {index}: {image_token} may only appear in user turns")
    roles = [turn["role"] for turn in turns if turn["role"] != "system"]
    if any(turn["role"] == "system" for turn in turns[1:]):
        raise MmtoolError(f"{sample}: a system turn may only come first")
    for index, role in enumerate(roles):
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            raise MmtoolError(f"{sample}: turns must alternate user/assistant starting with user; "
                              f"turn {index} is {role!r}")


def _segments(tokenizer, turns: list[dict], sample: str):
    """(text, is_answer) pieces whose concatenation is the template rendered on the whole conversation."""
    rendered = ""
    for index, turn in enumerate(turns):
        if turn["role"] == "assistant":
            with_header = _render(tokenizer, turns[:index], generation_prompt=True)
            yield _new_text(rendered, with_header, sample, index), False
            rendered = with_header
            after = _render(tokenizer, turns[:index + 1], generation_prompt=False)
            yield _new_text(rendered, after, sample, index), True
        else:
            after = _render(tokenizer, turns[:index + 1], generation_prompt=False)
            yield _new_text(rendered, after, sample, index), False
        rendered = after


def _render(tokenizer, turns: list[dict], generation_prompt: bool) -> str:
    if not turns:
        return ""
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)


def _new_text(before: str, after: str, sample: str, index: int) -> str:
    if not after.startswith(before):
        # Templates that rewrite earlier turns once later ones exist cannot be split turn by turn.
        raise MmtoolError(f"{sample}: the chat template renders turn {index} by changing the text before it; "
                          "turn-wise tokenization needs a prefix-stable template")
    return after[len(before):]


def _tokenize(tokenizer, text: str, image_token: str, image_id: int, num_image_tokens: int) -> list[int]:
    ids: list[int] = []
    for position, chunk in enumerate(text.split(image_token)):
        if position:
            ids += [image_id] * num_image_tokens
        if chunk:
            ids += tokenizer(chunk, add_special_tokens=False)["input_ids"]
    return ids


def _answer_labels(ids: list[int], end_of_turn: int | None) -> list[int]:
    """Supervise an answer's ids up to its last end-of-turn token (all of them when there is none)."""
    stop = len(ids)
    if end_of_turn is not None and end_of_turn in ids:
        stop = len(ids) - ids[::-1].index(end_of_turn)
    return ids[:stop] + [IGNORE_INDEX] * (len(ids) - stop)
