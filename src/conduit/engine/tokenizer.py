"""Tokenizer rebuilt from a GGUF's vocabulary and merges (byte-level BPE, or Gemma's
sentencepiece BPE), plus chat templates and streaming detokenization. Built to give the same ids
and text as transformers' GGUF tokenizer."""

from __future__ import annotations

import codecs
import json
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as _Backend

from conduit.engine.gguf_loader import GGUFModelFile

_CONTROL, _USER_DEFINED, _BYTE = 3, 4, 6  # llama.cpp token types

# Pre-tokenizer splits keyed by `tokenizer.ggml.pre`; anything else gets GPT-2's regex.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZER_SPLITS = dict.fromkeys(
    ["llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3", "dbrx", "pixtral"], _LLAMA3_SPLIT
)

# Turn-end markers that chat templates close an assistant turn with; generation stops on them.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|eom_id|>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable character table used by byte-level BPE vocabularies."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


class Tokenizer:
    def __init__(self, file: GGUFModelFile):
        kind = file.get("tokenizer.ggml.model")
        tokens: list[str] = file.get("tokenizer.ggml.tokens")
        types: list[int] = file.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        if kind == "gpt2":
            backend, self.token_bytes, special = _byte_level_bpe(file, tokens, types)
        elif kind == "llama":
            backend, self.token_bytes, special = _sentencepiece_bpe(file, tokens, types)
        else:
            raise ValueError(
                f"{file.path.name}: tokenizer model {kind!r} is not supported "
                "(byte-level BPE 'gpt2', or sentencepiece BPE 'llama')."
            )
        self._backend = backend
        self.vocab_size = len(tokens)
        self.special_ids = frozenset(special)

        self.bos_token_id = file.get("tokenizer.ggml.bos_token_id")
        self.eos_token_id = file.get("tokenizer.ggml.eos_token_id")
        self.add_bos_token = bool(file.get("tokenizer.ggml.add_bos_token", False))
        self.bos_token = tokens[self.bos_token_id] if self.bos_token_id is not None else None
        self.eos_token = tokens[self.eos_token_id] if self.eos_token_id is not None else None
        self.chat_template: str | None = file.get("tokenizer.chat_template")
        ids = {t: i for i, t in enumerate(tokens)}
        self.eos_token_ids: set[int] = (
            {self.eos_token_id} if self.eos_token_id is not None else set()
        )
        self.eos_token_ids |= {
            ids[t] for t in _END_OF_TURN if t in ids and t in (self.chat_template or "")
        }
        self._template: jinja2.Template | None = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Special-token text such as "<|im_start|>" always encodes to its single id;
        add_special_tokens only controls the BOS the model file asks for."""
        ids = self._backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def cover(self, vocab_size: int) -> None:
        """Let a (dummy) model with more ids than this vocabulary use it: the extra ids decode to
        nothing."""
        if vocab_size > self.vocab_size:
            self.token_bytes = self.token_bytes + [b""] * (vocab_size - self.vocab_size)
            self.vocab_size = vocab_size

    def detokenizer(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, skip_special_tokens)

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, **kwargs
    ) -> str:
        """Render the GGUF's template with Hugging Face's jinja semantics."""
        if self._template is None:
            if not self.chat_template:
                raise ValueError("This model has no chat template; send a plain prompt instead.")
            self._template = _compile_template(self.chat_template)
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            **kwargs,
        )


def _byte_level_bpe(file: GGUFModelFile, tokens: list[str], types: list[int]):
    """GPT-2 style: every token spelled in the byte alphabet, merges listed in the file.
    Returns the backend, each id's raw bytes and the special ids."""
    merges = [tuple(m.split(" ", 1)) for m in file.get("tokenizer.ggml.merges") or []]
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    # Tokens outside the byte alphabet are re-spelled byte by byte, as transformers does.
    spelled = [
        t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode()) for t in tokens
    ]
    backend = _Backend(models.BPE(vocab={t: i for i, t in enumerate(spelled)}, merges=merges))
    split = _PRE_TOKENIZER_SPLITS.get(file.get("tokenizer.ggml.pre"))
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    backend.decoder = decoders.ByteLevel()
    # A "control" token outside the byte alphabet is a llama.cpp mislabel; leave it be.
    special = _add_tokens(backend, tokens, types, lambda t: set(t) <= alphabet)
    byte_of = {c: b for b, c in spelling.items()}
    # Raw bytes per id: streaming decodes bytes, so a character split over tokens waits whole.
    return backend, [bytes(byte_of[c] for c in t) for t in spelled], special


def _sentencepiece_bpe(file: GGUFModelFile, tokens: list[str], types: list[int]):
    """SentencePiece BPE as llama.cpp stores it (Gemma): pieces spell a space as "▁", bytes
    with no piece fall back to <0xXX> tokens, and the file has scores but no merges. Built as
    transformers builds its GGUF Gemma tokenizer, so ids match it."""
    if file.get("tokenizer.ggml.add_space_prefix", True):
        raise ValueError(
            f"{file.path.name}: sentencepiece with a space prefix (llama 2 style) is not "
            "supported; only Gemma-style vocabularies are."
        )
    # Runs of spaces are stored as real spaces; the model spells them with "▁" like the rest.
    spelled = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {t: i for i, t in enumerate(spelled)}
    merges = [tuple(m.split(" ", 1)) for m in file.get("tokenizer.ggml.merges") or []]
    unknown = file.get("tokenizer.ggml.unknown_token_id")
    backend = _Backend(
        models.BPE(
            vocab=vocab,
            merges=merges or _merges_from_vocab(spelled, vocab),
            unk_token=None if unknown is None else spelled[unknown],
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    special = _add_tokens(backend, tokens, types, lambda t: t in vocab)
    token_bytes = [
        bytes([int(t[3:5], 16)]) if kind == _BYTE else t.replace("▁", " ").encode()
        for t, kind in zip(spelled, types)
    ]
    return backend, token_bytes, special


def _merges_from_vocab(spelled: list[str], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every split of a piece into two pieces, ranked by the piece's position in the file (which
    is Gemma's merge order; its scores are not), a longer left part first. ~1.5 s for 262k."""
    merges = []
    for piece in spelled:
        for i in range(len(piece) - 1, 0, -1):
            if piece[:i] in vocab and piece[i:] in vocab:
                merges.append((piece[:i], piece[i:]))
    return merges


def _add_tokens(backend: _Backend, tokens: list[str], types: list[int], usable) -> list[int]:
    """Control tokens (<|im_start|>) become special: matched whole, skipped when decoding.
    User-defined ones (<think>, Gemma's newline runs) become plain added tokens, matched whole
    too, as llama.cpp does. Returns the special ids."""
    special = [i for i, (t, k) in enumerate(zip(tokens, types)) if k == _CONTROL and usable(t)]
    backend.add_special_tokens(
        [AddedToken(tokens[i], special=True, normalized=False) for i in special]
    )
    backend.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, kind in zip(tokens, types)
            if kind == _USER_DEFINED and usable(t)
        ]
    )
    return special


class IncrementalDetokenizer:
    """Turns a stream of ids into text deltas. Works on raw bytes with an incremental UTF-8
    decoder: an incomplete multi-byte character is held back until its last byte arrives, so
    deltas never contain a U+FFFD that the full decode would not (their concatenation equals
    `decode(all_ids)`)."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self._bytes = tokenizer.token_bytes
        self._skip = tokenizer.special_ids if skip_special_tokens else frozenset()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_ids: list[int] | int) -> str:
        if isinstance(token_ids, int):
            token_ids = (token_ids,)
        data = b"".join(self._bytes[i] for i in token_ids if i not in self._skip)
        return self._utf8.decode(data)

    def flush(self) -> str:
        """Whatever is still held (an unfinished character) as replacement characters."""
        return self._utf8.decode(b"", final=True)


def _compile_template(source: str) -> jinja2.Template:
    # Mirrors transformers' chat template environment so renders match it byte for byte.
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)
