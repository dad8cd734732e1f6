"""SAM3's CLIP BPE text tokenizer without torch.

Reproduces ``sam3.model.tokenizer_ve.SimpleTokenizer`` with the settings SAM3's ``VETextEncoder``
uses (clean="lower", context length 32) id for id; ``tests/test_tokenizer.py`` checks parity.
"""

from __future__ import annotations

import functools
import gzip
import html
from collections.abc import Sequence
from pathlib import Path

import ftfy
import numpy as np
import regex

DEFAULT_VOCAB: Path = Path(__file__).parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
CONTEXT_LENGTH = 32
PAD_ID = 0
_N_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges, as sam3 does
_SPECIAL = ("<start_of_text>", "<end_of_text>")
# sam3's pattern: contractions, letter runs, single digits, runs of everything else. It names
# the specials "<start_of_text>"/"<end_of_text>" (CLIP says "<|startoftext|>"), and they come
# first, so their literal text in a prompt encodes as the special id.
_PATTERN = regex.compile(
    "|".join(_SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


class VocabError(ValueError):
    """The BPE vocabulary file is missing or is not a gzip of CLIP BPE merges."""


@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character map, so BPE never sees whitespace or
    control characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    rest = [b for b in range(256) if b not in printable]  # mapped to chr(256), chr(257), ...
    # Insertion order matters: it is the order of the first 256 vocabulary ids.
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(rest)}}


def _clean(text: str) -> str:
    """sam3's clean="lower": fix mojibake, unescape HTML twice, collapse whitespace, lower."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


def _read_merges(path: Path) -> list[tuple[str, str]]:
    try:
        with gzip.open(path, "rb") as fh:
            lines = fh.read().decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise VocabError(f"cannot read CLIP BPE merges from {path}: {exc}") from exc
    # Line 0 is a version header; sam3 reads exactly the next _N_MERGES lines.
    pairs = [line.split() for line in lines[1 : _N_MERGES + 1]]
    if len(pairs) != _N_MERGES or any(len(p) != 2 for p in pairs):
        raise VocabError(f"{path} is not a gzip of {_N_MERGES} CLIP BPE merges")
    return [(a, b) for a, b in pairs]


class Tokenizer:
    """CLIP BPE tokenizer giving the same ids as sam3's ``SimpleTokenizer(clean="lower")``."""

    def __init__(self, vocab_path: Path | str = DEFAULT_VOCAB) -> None:
        merges = _read_merges(Path(vocab_path))
        self._byte_encoder = _bytes_to_unicode()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        chars = list(self._byte_encoder.values())
        # Id order is CLIP's: 256 bytes, 256 word-final bytes, the merges, then the specials.
        words = [c + "</w>" for c in chars]
        self._decoder = [*chars, *words, *(a + b for a, b in merges), *_SPECIAL]
        self._encoder = {tok: i for i, tok in enumerate(self._decoder)}
        if len(self._encoder) != len(self._decoder):
            raise VocabError(f"{vocab_path} repeats BPE merges, so it is not CLIP's vocabulary")
        self._ranks = {m: i for i, m in enumerate(merges)}
        self._cache: dict[str, list[int]] = {}
        self.vocab_size: int = len(self._decoder)
        self.sot_id: int = self._encoder[_SPECIAL[0]]
        self.eot_id: int = self._encoder[_SPECIAL[1]]
        self.pad_id: int = PAD_ID

    def _bpe(self, token: str) -> list[int]:
        """Ids of one byte-encoded word: repeatedly merge the lowest-ranked adjacent pair."""
        if token in self._cache:
            return self._cache[token]
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            best = min(zip(word, word[1:]), key=lambda p: self._ranks.get(p, float("inf")))
            if best not in self._ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids = [self._encoder[w] for w in word]
        self._cache[token] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` after sam3's cleaning, without start/end tokens."""
        ids: list[int] = []
        for token in _PATTERN.findall(_clean(text)):
            if token in _SPECIAL:
                ids.append(self._encoder[token])
            else:  # BPE runs on the token's UTF-8 bytes, each mapped to a printable character
                ids.extend(self._bpe("".join(self._byte_encoder[b] for b in token.encode("utf-8"))))
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
        """int32 [N, context_length]: start, ids, end, then zero padding; an over-long row is cut
        to ``context_length`` with its last position set to the end token, as sam3 does."""
        if context_length < 1:
            raise ValueError(f"context_length must be at least 1, got {context_length}")
        if isinstance(texts, str):
            texts = [texts]
        out = np.full((len(texts), context_length), self.pad_id, dtype=np.int32)
        for row, text in zip(out, texts):
            ids = [self.sot_id, *self.encode(text), self.eot_id][:context_length]
            ids[-1] = self.eot_id
            row[: len(ids)] = ids
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, dropping start/end tokens and trailing padding after the end token.

        Id 0 is also the real token "!", so zeros count as padding only after an end token."""
        ids = [int(i) for i in ids]
        n = len(ids)
        while n and ids[n - 1] == self.pad_id:
            n -= 1
        if n < len(ids) and n and ids[n - 1] == self.eot_id:
            ids = ids[:n]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
        text = "".join(self._decoder[i] for i in ids if i not in (self.sot_id, self.eot_id))
        raw = bytes(self._byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def from_content_ids(self, ids: Sequence[int], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
        """int32 [1, context_length] for raw content ids (an alias): start, ids, end, padding.
        Id 0 would be read as padding and start/end belong only at the ends, so they are refused."""
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("an alias needs at least one token id")
        if len(ids) > context_length - 2:
            raise ValueError(f"an alias holds at most {context_length - 2} token ids, got {len(ids)}")
        bad = [i for i in ids if not 0 < i < self.sot_id]
        if bad:
            raise ValueError(
                f"token ids must lie in [1, {self.sot_id - 1}] (0 is padding to SAM3, "
                f"{self.sot_id}/{self.eot_id} are start/end), got {bad[:5]}"
            )
        out = np.full((1, context_length), self.pad_id, dtype=np.int32)
        out[0, : len(ids) + 2] = [self.sot_id, *ids, self.eot_id]
        return out

    def roundtrips(self, ids: Sequence[int]) -> bool:
        """Whether the text of content ``ids`` (no start/end/pad) re-tokenizes to the same ids."""
        return self.encode(self.decode(ids)) == [int(i) for i in ids]


@functools.lru_cache(maxsize=4)
def _load(vocab_path: Path) -> Tokenizer:
    return Tokenizer(vocab_path)


def load_tokenizer(vocab_path: Path | str | None = None) -> Tokenizer:
    """A shared ``Tokenizer`` per vocabulary file; building the BPE tables takes ~0.1 s."""
    return _load(Path(vocab_path if vocab_path is not None else DEFAULT_VOCAB).resolve())
