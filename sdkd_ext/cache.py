"""Encode every image once into VAE latents and every caption once into text embeddings, cached on disk.

Keys hash what decides the result: the image file (path, size in bytes, modification time), the
training resolution and flip, the caption text, and a hash of the VAE or text-encoder weights. A
second run over the same data, or another run with a teacher sharing the VAE, reads the cache and
never loads the VAE or text encoder into accelerator memory at all.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import Source
from .data import BadImage, Example, load_image
from .errors import SdkdError
from .progress import Meter, ProgressFn

TEXT_KIND, LATENT_KIND = "text", "latents"


def component_hash(src: Source, prefix: str) -> str:
    """Short sha256 of every tensor under `prefix` (names, dtypes, shapes and bytes): the identity of a VAE or encoder."""
    h = hashlib.sha256()
    for k in sorted(k for k in src.keys() if k.startswith(prefix)):
        t = src.get(k).contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()[:20]


def key_of(*parts: object) -> str:
    """A cache key: sha256 of the parts."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()


def image_key(path: Path, size: int, flip: bool, vae_hash: str) -> str:
    """Key of one image's latents: the file (path, byte size, mtime), resolution, flip and VAE."""
    st = path.stat()
    return key_of("image", path.resolve(), st.st_size, st.st_mtime_ns, size, flip, vae_hash)


def text_key(text: str, te_hash: str) -> str:
    """Key of one caption's embedding."""
    return key_of("text", te_hash, text)


class Cache:
    """Named tensor groups in small safetensors-format files under `root/<kind>/`, written atomically."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        """Where an entry lives (two-level fan-out keeps folders small). Safetensors inside, but not by name: web UIs
        list every .safetensors/.ckpt/.pt under their model folders, where run folders may sit."""
        return self.root / kind / key[:2] / f"{key}.tensors"

    def has(self, kind: str, key: str) -> bool:
        """Whether the entry is there."""
        return self.path(kind, key).is_file()

    def load(self, kind: str, key: str) -> dict[str, torch.Tensor]:
        """An entry's tensors (as stored, usually fp16)."""
        from safetensors.torch import load_file

        return load_file(str(self.path(kind, key)))

    def save(self, kind: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Write an entry atomically; a full disk is a clear error, never a half-written entry."""
        from safetensors.torch import save_file

        final = self.path(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=final.parent)
        os.close(fd)
        try:
            save_file({k: v.detach().to("cpu", torch.float16).contiguous() for k, v in tensors.items()}, tmp)
            os.replace(tmp, final)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            raise SdkdError(f"could not write the latent/text cache in {self.root}: {e.strerror or e}; "
                            "free some disk space or pass another --cache-dir") from e


@torch.no_grad()
def encode_texts(texts: list[str], load_encoder: Callable[[], torch.nn.Module], load_tokenizer: Callable[[], object],
                 cache: Cache, te_hash: str, batch: int = 16, progress: ProgressFn | None = None) -> list[str]:
    """Cache the embedding (last hidden state, 77 tokens) of every distinct text; return each text's key.

    The text encoder is loaded (by `load_encoder`) only if some text is missing from the cache, and freed after."""
    keys = [text_key(t, te_hash) for t in texts]
    todo = list(dict.fromkeys(t for t, k in zip(texts, keys) if not cache.has(TEXT_KIND, k)))
    if not todo:
        return keys
    meter = Meter(progress, "encode-text", len(todo))
    meter.start("loading the text encoder")
    text_encoder, tokenizer = load_encoder(), load_tokenizer()
    device = next(text_encoder.parameters()).device
    for i in range(0, len(todo), batch):
        chunk = todo[i:i + batch]
        ids = tokenizer(chunk, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        hidden = text_encoder(ids)[0]
        for text, h in zip(chunk, hidden):
            cache.save(TEXT_KIND, text_key(text, te_hash), {"text": h})
        meter.advance(len(chunk))
    return keys


@dataclass
class ImageCacheResult:
    """Per example: its latent keys (original, and mirrored when flipping) or None if skipped; and the skip counts."""

    keys: list[tuple[str, ...] | None]
    skipped: dict[str, list[str]]

    def summary(self) -> str:
        """'skipped 2 unreadable (a.png, b.jpg), 1 too small (c.png)' or ''."""
        parts = [f"{len(v)} {kind} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})" for kind, v in self.skipped.items() if v]
        return "skipped " + ", ".join(parts) if parts else ""


@dataclass(frozen=True)
class Crop:
    """How images become training latents: the square side in pixels they are cropped to, whether their mirror images
    are encoded too, and the smallest side an image may have."""

    size: int
    flip: bool = False
    min_side: int = 0


@torch.no_grad()
def encode_images(examples: list[Example], load_vae: Callable[[], torch.nn.Module], cache: Cache, vae_hash: str,
                  crop: Crop, batch: int = 4, progress: ProgressFn | None = None) -> ImageCacheResult:
    """Cache the VAE posterior (mean, std) of every image (and its mirror image when `crop.flip`); skip bad images.

    The VAE is loaded (by `load_vae`) only if some readable image is missing from the cache, and freed after."""
    size, flip, min_side = crop.size, crop.flip, crop.min_side
    flips = (False, True) if flip else (False,)
    keys: list[tuple[str, ...] | None] = [tuple(image_key(ex.path, size, f, vae_hash) for f in flips) for ex in examples]
    todo = [i for i, k in enumerate(keys) if not all(cache.has(LATENT_KIND, x) for x in k)]
    skipped: dict[str, list[str]] = {"unreadable": [], "too small": []}
    vae = None

    def load(i: int) -> torch.Tensor | BadImage:
        try:
            return load_image(examples[i].path, size, min_side)
        except BadImage as e:
            return e

    meter = Meter(progress, "encode-images", len(todo))
    meter.start()
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        for start in range(0, len(todo), batch):
            chunk = todo[start:start + batch]
            good, pixels = [], []
            for i, img in zip(chunk, pool.map(load, chunk)):
                if isinstance(img, BadImage):
                    skipped[img.kind].append(examples[i].path.name)
                    keys[i] = None
                else:
                    good.append(i)
                    pixels.append(img)
            if good:
                if vae is None:
                    vae = load_vae()
                device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
                x = torch.stack(pixels)
                for f, x_f in enumerate((x, x.flip(-1)) if flip else (x,)):
                    dist = vae.encode(x_f.to(device, dtype)).latent_dist
                    for j, i in enumerate(good):
                        cache.save(LATENT_KIND, keys[i][f], {"mean": dist.mean[j], "std": dist.std[j]})
            meter.advance(len(chunk))
    return ImageCacheResult(keys, skipped)


class CachedDataset:
    """Training pairs read from the cache: a sampled, scaled latent (random flip) and its text embedding.

    Entries read once stay in memory up to `memo_bytes` (fp16 as stored), so later epochs do not re-read their files."""

    def __init__(self, cache: Cache, items: list[tuple[tuple[str, ...], str]], scaling: float, memo_bytes: int = 2**28):
        self.cache, self.items, self.scaling = cache, items, scaling
        self.memo_bytes, self._memo, self._memo_used = memo_bytes, {}, 0

    def _load(self, kind: str, key: str) -> dict[str, torch.Tensor]:
        """A cache entry, from memory when it has been read before and fitted in the memo."""
        entry = self._memo.get((kind, key))
        if entry is None:
            entry = self.cache.load(kind, key)
            size = sum(t.numel() * t.element_size() for t in entry.values())
            if self._memo_used + size <= self.memo_bytes:
                self._memo[(kind, key)] = entry
                self._memo_used += size
        return entry

    def __len__(self) -> int:
        return len(self.items)

    def get(self, index: int, seed: int) -> dict[str, torch.Tensor]:
        """Item `index`, with the flip choice and the posterior sample drawn from `seed` (reproducible anywhere)."""
        latent_keys, tkey = self.items[index]
        gen = torch.Generator("cpu").manual_seed(seed)
        choice = int(torch.randint(len(latent_keys), (1,), generator=gen)) if len(latent_keys) > 1 else 0
        z = self._load(LATENT_KIND, latent_keys[choice])
        latents = z["mean"].float()
        if "std" in z:
            latents = latents + z["std"].float() * torch.randn(latents.shape, generator=gen)
        return {"latents": latents * self.scaling, "text": self._load(TEXT_KIND, tkey)["text"].float()}

    def fingerprint(self) -> str:
        """Identity of the data as trained on: every key in order (files, sizes, captions, resolution, models)."""
        return key_of(*(k for keys, t in self.items for k in (*keys, t)))
