"""The shipped CLIP tokenizer files give OpenAI CLIP's ids, offline (made by tools/make_tokenizer.py)."""

from __future__ import annotations

from pathlib import Path

import transformers

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "sdkd_ext" / "configs" / "tokenizer"
FILES = ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]
TEXTS = [
    "a red circle",
    "A photo of an astronaut, riding a horse!",
    "a large blue square at the bottom right on a white background",
    "masterpiece, best quality, (1girl:1.2), [blue hair]",
    "photo of a cat wearing sunglasses -- 8k uhd, it's 3.14 o'clock",
    "naïve café über straße 東京 🐑🔥",
]


def slow():
    """The slow (Python) CLIPTokenizer from the shipped files."""
    return transformers.CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


def test_files_shipped():
    """All four tokenizer files are in the package."""
    assert all((TOKENIZER_DIR / f).is_file() for f in FILES)


def test_known_ids_and_lengths():
    """Known ids, vocabulary size, special tokens and padding to 77."""
    tok = slow()
    assert tok("a red circle").input_ids == [49406, 320, 736, 7117, 49407]
    assert tok(TEXTS[1]).input_ids == [49406, 320, 1125, 539, 550, 18376, 267, 6765, 320, 4558, 256, 49407]
    # with ftfy (a dependency) punctuation runs stay whole, as OpenAI's CLIP and A1111 tokenize them
    assert tok("sunglasses -- 8k").input_ids == [49406, 12906, 2432, 279, 330, 49407]
    assert len(tok) == tok.vocab_size == 49408 and tok.model_max_length == 77
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (49406, 49407, 49407, 49407)
    padded = tok("a small red circle", padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(padded) == 77 and padded[:6] == [49406, 320, 2442, 736, 7117, 49407] and set(padded[6:]) == {49407}
    long = tok(" ".join(["circle"] * 100), padding="max_length", truncation=True, max_length=77).input_ids
    assert len(long) == 77 and long[0] == 49406 and long[-1] == 49407


def test_fast_tokenizer_agrees():
    """CLIPTokenizerFast built from the same files gives the same ids as the slow one."""
    fast = transformers.CLIPTokenizerFast.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)
    tok = slow()
    assert fast.model_max_length == 77 and fast.pad_token == "<|endoftext|>"
    for text in TEXTS:
        assert fast(text).input_ids == tok(text).input_ids, text
