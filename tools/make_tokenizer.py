"""Write the SD1.x CLIP tokenizer files that sdkd ships (vocab.json, merges.txt, configs) from OpenAI's BPE file.

The BPE file (MIT licence) ships inside the open-clip-torch wheel on PyPI:
    pip download --no-deps open-clip-torch -d /tmp/oc
    python tools/make_tokenizer.py /tmp/oc/open_clip_torch-*.whl
"""

from __future__ import annotations

import argparse
import gzip
import json
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "sdkd_ext" / "configs" / "tokenizer"
MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # how many merges OpenAI's SimpleTokenizer keeps (48,894)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_chars() -> list[str]:
    """GPT-2's bytes_to_unicode characters in its order: printable bytes as themselves, then the rest as 256, 257, ..."""
    spans = [("!", "~"), ("¡", "¬"), ("®", "ÿ")]
    keep = [b for lo, hi in spans for b in range(ord(lo), ord(hi) + 1)]
    rest = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + n) for n in range(len(rest))]


def read_merges(source: Path) -> list[str]:
    """The kept merge lines of the BPE file, read from the .gz itself or from inside the wheel."""
    raw = zipfile.ZipFile(source).read(MEMBER) if zipfile.is_zipfile(source) else source.read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = lines[1:N_MERGES + 1]
    assert len(merges) == N_MERGES and all(len(m.split()) == 2 for m in merges), "not CLIP's BPE file"
    return merges


def vocabulary(merges: list[str]) -> dict[str, int]:
    """Token -> id as SimpleTokenizer builds it: bytes, bytes + </w>, each merge joined, then BOS and EOS."""
    chars = byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens) == 49408, "duplicate tokens"
    return vocab


def write(source: Path, out: Path = OUT) -> None:
    """Write vocab.json, merges.txt, special_tokens_map.json and tokenizer_config.json into `out`."""
    merges = read_merges(source)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocabulary(merges), ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
              "errors": "replace", "add_prefix_space": False, "clean_up_tokenization_spaces": True}
    for name, data in [("special_tokens_map.json", special), ("tokenizer_config.json", config)]:
        (out / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    """Command line: make_tokenizer.py SOURCE [--out DIR]."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="open_clip_torch-*.whl or bpe_simple_vocab_16e6.txt.gz")
    ap.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    args = ap.parse_args()
    write(args.source, args.out)


if __name__ == "__main__":
    main()
