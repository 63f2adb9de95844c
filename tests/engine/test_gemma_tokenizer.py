"""Gemma's sentencepiece tokenizer, rebuilt from the GGUF, against transformers' GGUF tokenizer
for the same file: ids (with the BOS Gemma expects), decoding and streaming."""

from __future__ import annotations

import pytest

from conduit.engine import Tokenizer, resolve_model_path
from conduit.engine.gguf_loader import GGUFModelFile

TEXTS = [
    "The capital of France is",
    "Hello world!\n\nNew  paragraph   with    runs of spaces\tand\ttabs.\n\n\n",
    "  leading spaces and a trailing one ",
    "def f(x):\n    return x ** 2  # square\n",
    "Tokyo (東京), naïve café — 🚀🦙 ok",
    "rare characters fall back to bytes: \x07 𠀀 ꙮ",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text<eos> and <0x41> written out",
    "1234567890 3.14159 -42 1e-9",
    "a" * 60 + " " + "ab" * 30,
    "",
]


@pytest.fixture(scope="module")
def path():
    return resolve_model_path("gemma3-270m")


@pytest.fixture(scope="module")
def ours(path) -> Tokenizer:
    return Tokenizer(GGUFModelFile(path))


@pytest.fixture(scope="module")
def hf(path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_transformers(ours, hf, text):
    assert ours.encode(text, add_special_tokens=True) == hf(text)["input_ids"]
    assert ours.encode(text) == hf(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("text", TEXTS)
def test_decode_and_stream(ours, hf, text):
    ids = ours.encode(text, add_special_tokens=True)
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    assert ours.decode(ids, skip_special_tokens=False) == hf.decode(ids)
    detokenizer = ours.detokenizer()
    assert "".join(detokenizer.push(i) for i in ids) + detokenizer.flush() == ours.decode(ids)


def test_special_tokens(ours):
    assert (ours.bos_token, ours.eos_token, ours.add_bos_token) == ("<bos>", "<eos>", True)
    assert ours.encode("hi", add_special_tokens=True)[0] == ours.bos_token_id == 2
    assert ours.eos_token_ids == {1}  # a base model: no chat template, no <end_of_turn> stop
    assert ours.vocab_size == 262144 and ours.chat_template is None
    assert {2, 105, 106} <= ours.special_ids  # <bos>, <start_of_turn>, <end_of_turn>
    assert ours.token_bytes[ours.encode("\x07")[0]] == b"\x07"  # a byte-fallback token
    with pytest.raises(ValueError, match="no chat template"):
        ours.apply_chat_template([{"role": "user", "content": "hi"}])
