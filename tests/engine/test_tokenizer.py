"""Tokenizer parity with transformers' GGUF tokenizer, chat templates, streaming detokenization."""

from __future__ import annotations

import pytest

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # -> 5\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "naïve café — déjà vu, Straße, ½ + ¼ = ¾",
    "Emoji: 🚀🔥👍🏽 family: 👨‍👩‍👧‍👦 flags: 🇫🇷🇯🇵",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "    leading spaces, trailing spaces    ",
    "tabs\tand\t\tnewlines\n\n\n\r\nmixed \n \n",
    "digits 0123456789 3.14159 1,000,000 and 2024-01-01",
    "It's we're they'll I'd you've",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after a special token<file_sep>",
    "",
    " ",
    "a" * 300,
]


@pytest.fixture(scope="module")
def tokenizer(llm):
    return llm.tokenizer


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(tokenizer, hf_tokenizer, text):
    assert tokenizer.encode(text) == hf_tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", TEXTS)
def test_decode_matches_transformers(tokenizer, hf_tokenizer, text):
    ids = tokenizer.encode(text)
    for skip in (True, False):
        assert tokenizer.decode(ids, skip_special_tokens=skip) == hf_tokenizer.decode(
            ids, skip_special_tokens=skip
        )
    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_special_tokens_are_single_ids(tokenizer):
    assert tokenizer.encode("<|im_start|>") == [1]
    assert tokenizer.encode("<|im_end|>") == [2]
    assert tokenizer.decode([1, 28, 2], skip_special_tokens=True) == tokenizer.decode([28])
    assert tokenizer.eos_token_ids == {2}  # eos is <|im_end|> in this file
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")


CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another, in 日本語 please 🙂"},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(
    tokenizer, hf_tokenizer, messages, add_generation_prompt
):
    ours = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    ref = hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours == ref
    if messages[0]["role"] != "system":
        assert ours.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


@pytest.mark.parametrize("text", [t for t in TEXTS if t] + ["🙂", "漢", "🇫🇷 x 🇯🇵"])
def test_incremental_detokenizer_emits_whole_characters(tokenizer, text):
    ids = tokenizer.encode(text)
    detok = tokenizer.detokenizer(skip_special_tokens=False)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text == tokenizer.decode(ids, skip_special_tokens=False)


def test_incremental_detokenizer_holds_split_characters(tokenizer):
    ids = tokenizer.encode("🙂")
    assert len(ids) > 1, "the emoji must span several byte-level tokens for this test"
    detok = tokenizer.detokenizer()
    assert [detok.push(i) for i in ids] == [""] * (len(ids) - 1) + ["🙂"]


def test_incremental_detokenizer_flushes_an_unfinished_character(tokenizer):
    ids = tokenizer.encode("🙂")
    detok = tokenizer.detokenizer()
    assert detok.push(ids[:-1]) == ""
    assert detok.flush() == tokenizer.decode(ids[:-1])  # replacement char(s), as a full decode
    assert "\ufffd" in tokenizer.decode(ids[:-1])


def test_incremental_detokenizer_skips_special_tokens(tokenizer):
    ids = tokenizer.encode("<|im_start|>assistant\nHi<|im_end|>")
    detok = tokenizer.detokenizer()
    assert "".join(detok.push(i) for i in ids) + detok.flush() == "assistant\nHi"
