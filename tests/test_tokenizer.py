"""Parity of ``mlx_alias.tokenizer`` with sam3's own ``SimpleTokenizer`` on the same vocabulary."""

from __future__ import annotations

import gzip
import string
import subprocess
import sys

import numpy as np
import pytest

from mlx_alias.tokenizer import (
    CONTEXT_LENGTH,
    DEFAULT_VOCAB,
    PAD_ID,
    Tokenizer,
    VocabError,
    load_tokenizer,
)

pytest.importorskip("torch")
import mlx_alias.reference.compat  # noqa: E402,F401  (stubs triton so that sam3 imports)

# isort: split
from sam3.model.tokenizer_ve import SimpleTokenizer  # noqa: E402

LONG = [
    "a photo of " + "a very large red cat sitting on the old wooden table " * 6,
    "x" * 400,
    " ".join(str(i) for i in range(100)),
    "!?" * 200,
    "猫" * 60,
]
CORPUS = [
    # plain words and capitals
    "cat",
    "a cat",
    "person",
    "traffic light",
    "hot dog",
    "teddy bear",
    "Dog",
    "DOG",
    "The Quick Brown Fox",
    "iPhone",
    "McDonald's",
    # punctuation runs
    "hello, world",
    "wow!",
    "wow!!!",
    "what?!",
    "a.b.c",
    "...",
    "--",
    "(parenthesis)",
    "[bracket]{brace}",
    "!$ !% !&",
    "@#$%^&*",
    "a/b\\c",
    "_underscore_",
    'quote "x"',
    # apostrophes and contractions
    "don't",
    "it's",
    "we're",
    "they've",
    "I'm",
    "you'll",
    "he'd",
    "DON'T",
    "'s",
    "rock 'n' roll",
    "dogs'",
    "o'clock",
    # numbers and digit runs
    "42",
    "12345",
    "3.14159",
    "1st place",
    "2nd",
    "covid-19",
    "٣٤",
    "½ cup",
    # HTML entities, mojibake that ftfy fixes
    "rock &amp; roll",
    "&amp;amp;",
    "&lt;tag&gt;",
    "caf&eacute;",
    "&#39;quoted&#39;",
    "<b>&amp;amp;</b>",  # ftfy leaves entities next to "<" alone, so both unescapes matter
    "schÃ¶n",
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
    "cafÃ©",
    # accents, CJK, emoji, Arabic and other scripts
    "café",
    "naïve résumé",
    "Ångström",
    "straße",
    "İstanbul",
    "日本語",
    "猫と犬",
    "中文 text",
    "한국어",
    "🐶",
    "🐶 dog 🐱",
    "👨‍👩‍👧",
    "❤️",
    "مرحبا بالعالم",
    "Привет мир",
    "Ελληνικά",
    "हिन्दी",
    # whitespace
    "a\tb",
    "a\nb",
    "a   b",
    "  leading and trailing  ",
    "\t\n",
    "",
    " ",
    "   ",
    "a\u00a0b",
    "zero\u200bwidth",
    # special-token text written literally
    "<start_of_text>",
    "<end_of_text>",
    "a <start_of_text> b",
    "<END_OF_TEXT>",
    "<start_of_text",
    # odd but legal; the long s "ſ" case-folds to "s", so only case-insensitive "'s" takes it
    "it'ſ",
    "<ſtart_of_text>",
    "\u212a",  # Kelvin sign
    "</w>",
    "a</w>b",
    "\x00nul",
    "tab\there",
    *LONG,
]
# Short, lowercase-able natural text whose ids are expected to re-tokenize to themselves.
NATURAL = [
    "a cat",
    "traffic light",
    "The Quick Brown Fox",
    "hello, world",
    "don't",
    "12345",
    "rock &amp; roll",
    "schÃ¶n",
    "café",
    "日本語",
    "🐶 dog 🐱",
    "مرحبا بالعالم",
    "a\tb",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


@pytest.fixture(scope="module")
def ref() -> SimpleTokenizer:
    return SimpleTokenizer(bpe_path=str(DEFAULT_VOCAB), context_length=CONTEXT_LENGTH, clean="lower")


def test_corpus_is_varied() -> None:
    assert len(CORPUS) >= 60 and len(set(CORPUS)) == len(CORPUS)


def test_vocabulary_and_special_ids(tok: Tokenizer, ref: SimpleTokenizer) -> None:
    assert tok.vocab_size == ref.vocab_size == 49408
    assert (tok.sot_id, tok.eot_id) == (ref.sot_token_id, ref.eot_token_id) == (49406, 49407)
    assert tok.pad_id == PAD_ID == 0
    assert CONTEXT_LENGTH == 32
    assert tok.decode([0]) == ref.decode([0]) == "!"


def test_call_matches_sam3(tok: Tokenizer, ref: SimpleTokenizer) -> None:
    ours = tok(CORPUS)
    theirs = ref(CORPUS, context_length=CONTEXT_LENGTH).numpy()
    assert ours.dtype == np.int32 and ours.shape == (len(CORPUS), CONTEXT_LENGTH)
    bad = [t for t, a, b in zip(CORPUS, ours, theirs) if not np.array_equal(a, b)]
    assert not bad, f"rows differ from sam3 for {bad!r}"


@pytest.mark.parametrize("text", CORPUS)
def test_encode_matches_sam3(tok: Tokenizer, ref: SimpleTokenizer, text: str) -> None:
    assert tok.encode(text) == ref.encode(text)


@pytest.mark.parametrize("context_length", [1, 2, 5, 32, 77])
def test_context_lengths_match_sam3(tok: Tokenizer, ref: SimpleTokenizer, context_length: int) -> None:
    texts = ["", "a cat", *LONG]
    expected = ref(texts, context_length=context_length).numpy()
    np.testing.assert_array_equal(tok(texts, context_length=context_length), expected)


def test_long_inputs_are_truncated_with_end_token(tok: Tokenizer) -> None:
    rows = tok(LONG)
    assert all(len(tok.encode(t)) + 2 > CONTEXT_LENGTH for t in LONG)
    assert (rows[:, 0] == tok.sot_id).all() and (rows[:, -1] == tok.eot_id).all()
    assert (rows[:, 1:-1] != tok.eot_id).all() and (rows[:, 1:-1] != tok.sot_id).all()


def test_single_string_and_empty_batch(tok: Tokenizer) -> None:
    np.testing.assert_array_equal(tok("a cat"), tok(["a cat"]))
    assert tok([]).shape == (0, CONTEXT_LENGTH)
    row = tok("")[0]
    assert row[:2].tolist() == [tok.sot_id, tok.eot_id] and not row[2:].any()


def test_special_token_text_encodes_as_special_ids(tok: Tokenizer) -> None:
    assert tok.encode("<start_of_text>") == [tok.sot_id]
    assert tok.encode("<END_OF_TEXT>") == [tok.eot_id]  # cleaning lowercases it first


@pytest.mark.parametrize("text", [t for t in CORPUS if t not in LONG])
def test_decode_matches_sam3(tok: Tokenizer, ref: SimpleTokenizer, text: str) -> None:
    ids = ref.encode(text)
    # sam3 decodes special ids to their literal text; ours drops them, and strips the spaces
    # that sam3 leaves where each word-final "</w>" was.
    content = [i for i in ids if i not in (ref.sot_token_id, ref.eot_token_id)]
    expected = ref.decode(content).strip()
    assert tok.decode(ids) == expected
    assert tok.decode(tok(text)[0]) == expected  # the padded row from __call__ decodes alike


def test_decode_keeps_real_bang_and_drops_only_trailing_padding(tok: Tokenizer, ref: SimpleTokenizer) -> None:
    text = next(f"wow !{c}" for c in string.punctuation if 0 in ref.encode(f"wow !{c}"))
    ids = ref.encode(text)
    row = tok(text)[0]
    assert 0 in ids and row[-1] == PAD_ID
    assert tok.decode(row) == tok.decode(ids) == ref.decode(ids).strip()
    assert "!" in tok.decode(row)
    # Zeros with no end token before them are real "!" tokens, not padding.
    assert tok.decode([*ids, 0, 0]) == ref.decode([*ids, 0, 0]).strip()


def test_decode_rejects_out_of_range_ids(tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


@pytest.mark.parametrize("text", NATURAL)
def test_roundtrips_for_encoded_natural_text(tok: Tokenizer, text: str) -> None:
    assert tok.roundtrips(tok.encode(text))


def test_roundtrips_false_where_text_remerges(tok: Tokenizer, ref: SimpleTokenizer) -> None:
    # A non-final letter then a word-final letter: the joined text BPE-merges into another id.
    letters = string.ascii_lowercase
    pairs = [
        [ref.encoder[a], ref.encoder[b + "</w>"]]
        for a in letters
        for b in letters
        if ref.encode(a + b) != [ref.encoder[a], ref.encoder[b + "</w>"]]
    ]
    assert pairs, "expected some letter pair to merge"
    ids = pairs[0]
    assert tok.decode(ids) == ref.decode(ids).strip()
    assert len(ref.encode(ref.decode(ids))) == 1  # sam3 itself re-tokenizes it to one id
    assert not tok.roundtrips(ids)
    assert all(tok.roundtrips([i]) for i in ids if ref.decoder[i].endswith("</w>"))


@pytest.mark.parametrize(
    "ids_of",
    [
        lambda r: r.encode("<start_of_text>"),  # decode drops the special id
        lambda r: [r.encoder["A</w>"]],  # the vocabulary has capitals; cleaning lowercases them
        lambda r: [r.encoder["hel"]],  # a word-initial piece re-encodes as a whole word
        lambda r: [r.encoder[r.byte_encoder[0xC3] + "</w>"]],  # half a UTF-8 character: U+FFFD
        lambda r: [r.encoder[r.byte_encoder[0x07] + "</w>"]],  # a control byte ftfy deletes
    ],
)
def test_roundtrips_false_for_known_cases(tok: Tokenizer, ref: SimpleTokenizer, ids_of) -> None:
    assert not tok.roundtrips(ids_of(ref))


def test_load_tokenizer_is_cached() -> None:
    assert load_tokenizer() is load_tokenizer(DEFAULT_VOCAB) is load_tokenizer(str(DEFAULT_VOCAB))


def test_missing_vocab_gives_clear_error(tmp_path) -> None:
    missing = tmp_path / "nope.txt.gz"
    with pytest.raises(VocabError, match="nope.txt.gz"):
        Tokenizer(missing)
    assert issubclass(VocabError, ValueError)


def test_corrupt_vocab_gives_clear_error(tmp_path) -> None:
    not_gzip = tmp_path / "plain.txt.gz"
    not_gzip.write_text("#version: 0.2\ni n\n")
    with pytest.raises(VocabError, match="plain.txt.gz"):
        Tokenizer(not_gzip)
    too_short = tmp_path / "short.txt.gz"
    too_short.write_bytes(gzip.compress(b"#version: 0.2\ni n\nt h\n"))
    with pytest.raises(VocabError, match="short.txt.gz"):
        Tokenizer(too_short)


def test_module_imports_without_torch_or_sam3() -> None:
    code = "import sys, mlx_alias.tokenizer; print(sorted({'torch', 'sam3', 'iopath'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_alias_ids_are_framed_and_checked():
    tok = load_tokenizer()
    row = tok.from_content_ids([320, 1929])
    assert row.shape == (1, 32) and row[0, :4].tolist() == [tok.sot_id, 320, 1929, tok.eot_id]
    assert not row[0, 4:].any()
    for bad in ([], [0], [5, tok.eot_id], [tok.sot_id], [49408], list(range(1, 32))):
        with pytest.raises(ValueError):
            tok.from_content_ids(bad)
