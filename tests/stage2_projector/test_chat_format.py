"""Turn-wise chat encoding: ids equal the whole-conversation template's, labels cover exactly the answers."""
import pytest

from mmtool.errors import MmtoolError
from stage2_projector.chat_format import IGNORE_INDEX, encode_conversation, encode_prompt
from tests.helpers.tiny_llm import bpe_tokenizer, word_tokenizer

WORDS = ["what", "is", "this", "a", "cat", "red", "?", "yes", "no", "it", "."]
CONVERSATION = [
    {"role": "user", "content": "<image>\nwhat is this ?"},
    {"role": "assistant", "content": "a cat ."},
    {"role": "user", "content": "is it red ?"},
    {"role": "assistant", "content": "no ."},
]


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """The bundled SmolLM2-135M-Instruct tokenizer (real ChatML template with a default system prompt)."""
    from transformers import AutoTokenizer

    from stage2_projector.llm import IMAGE_TOKEN, resolve_llm

    source = resolve_llm("llama")
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)  # as stage2_projector.llm.add_image_token does
    return tokenizer


def whole_conversation_ids(tokenizer, turns, num_image_tokens):
    text = tokenizer.apply_chat_template(turns, tokenize=False)
    return tokenizer(text.replace("<image>", "<image>" * num_image_tokens), add_special_tokens=False)["input_ids"]


def supervised_runs(ids, labels):
    """Contiguous runs of supervised ids."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    return runs + ([current] if current else [])


def test_hand_written_expectation_token_by_token():
    tokenizer = word_tokenizer(WORDS)
    ids, labels = encode_conversation(tokenizer, CONVERSATION, "<image>", 3)
    start, end, image, user, assistant = 2, 3, 4, 6, 7
    what, is_, this, a, cat, red, question, no, it, dot = 8, 9, 10, 11, 12, 13, 14, 16, 17, 18
    expected = [
        (start, False), (user, False), (image, False), (image, False), (image, False),
        (what, False), (is_, False), (this, False), (question, False), (end, False),
        (start, False), (assistant, False), (a, True), (cat, True), (dot, True), (end, True),
        (start, False), (user, False), (is_, False), (it, False), (red, False), (question, False), (end, False),
        (start, False), (assistant, False), (no, True), (dot, True), (end, True),
    ]
    assert ids == [token for token, _ in expected]
    assert labels == [token if supervised else IGNORE_INDEX for token, supervised in expected]


@pytest.mark.parametrize("num_image_tokens", [1, 4])
def test_bpe_zephyr_turnwise_equals_whole(num_image_tokens):
    tokenizer = bpe_tokenizer(["what is this? a cat. is it red? no, it is not. describe the picture"] * 4)
    turns = [{"role": "system", "content": "be brief"},
             {"role": "user", "content": "what is this?<image>"},
             {"role": "assistant", "content": "a cat."},
             {"role": "user", "content": "is it red?"},
             {"role": "assistant", "content": " no, it is not."}]
    ids, labels = encode_conversation(tokenizer, turns, "<image>", num_image_tokens)
    assert ids == whole_conversation_ids(tokenizer, turns, num_image_tokens)
    eos = tokenizer.eos_token
    assert [tokenizer.decode(run) for run in supervised_runs(ids, labels)] == ["a cat." + eos, " no, it is not." + eos]
    assert ids.count(tokenizer.convert_tokens_to_ids("<image>")) == num_image_tokens


@pytest.mark.slow
def test_smollm2_template_turnwise_equals_whole(smollm2_tokenizer):
    turns = [{"role": "user", "content": "<image>\nWhat is this?"},
             {"role": "assistant", "content": "A grinning face."},
             {"role": "user", "content": "Which group is it in?"},
             {"role": "assistant", "content": "Smileys & Emotion"},
             {"role": "user", "content": "Is it red?"},
             {"role": "assistant", "content": "No."}]
    ids, labels = encode_conversation(smollm2_tokenizer, turns, "<image>", 5)
    assert ids == whole_conversation_ids(smollm2_tokenizer, turns, 5)
    runs = [smollm2_tokenizer.decode(run) for run in supervised_runs(ids, labels)]
    assert runs == ["A grinning face.<|im_end|>", "Smileys & Emotion<|im_end|>", "No.<|im_end|>"]
    # the newline the template writes after <|im_end|> is input, not a target
    assert smollm2_tokenizer.decode(ids[-1:]) == "\n" and labels[-1] == IGNORE_INDEX


@pytest.mark.slow
def test_prompt_is_the_conversation_up_to_the_answer(smollm2_tokenizer):
    ids, labels = encode_conversation(smollm2_tokenizer, CONVERSATION[:2], "<image>", 2)
    prompt = encode_prompt(smollm2_tokenizer, CONVERSATION[:1], "<image>", 2)
    first_answer = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert prompt == ids[:first_answer]


def test_truncation_keeps_supervised_tokens_or_fails():
    tokenizer = word_tokenizer(WORDS)
    full_ids, _ = encode_conversation(tokenizer, CONVERSATION, "<image>", 3)
    ids, labels = encode_conversation(tokenizer, CONVERSATION, "<image>", 3, max_length=14)
    assert ids == full_ids[:14] and [label for label in labels if label != IGNORE_INDEX] == full_ids[12:14]
    with pytest.raises(MmtoolError, match=r"^sample 7: no assistant token to train on within max_length 12$"):
        encode_conversation(tokenizer, CONVERSATION, "<image>", 3, max_length=12, sample="sample 7")
    with pytest.raises(MmtoolError, match="cuts through an image"):
        encode_conversation(tokenizer, CONVERSATION, "<image>", 3, max_length=3)


@pytest.mark.parametrize("turns, message", [
    ([{"role": "user", "content": "what is this ?"}], "no assistant token to train on"),
    ([{"role": "assistant", "content": "a cat"}], "turn 0 is 'assistant'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "turn 1 is 'user'"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "<image>"}], "only appear in user turns"),
    ([{"role": "robot", "content": "a"}], "turn 0 must be"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "system turn may only come first"),
])
def test_bad_conversations_fail_with_one_line(turns, message):
    with pytest.raises(MmtoolError, match=message) as caught:
        encode_conversation(word_tokenizer(WORDS), turns, "<image>", 1, sample="demo.json#3")
    assert str(caught.value).startswith("demo.json#3: ") and "\n" not in str(caught.value)


def test_missing_image_token_is_an_error():
    with pytest.raises(MmtoolError, match="tokenizer has no '<img>' token"):
        encode_conversation(word_tokenizer(WORDS), CONVERSATION, "<img>", 1)
