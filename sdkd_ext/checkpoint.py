"""Reading model files lazily: single-file `.safetensors`/`.ckpt` and diffusers folders, all as LDM-named tensors.

A `Source` lists keys with their shapes and dtypes without loading data; tensors are read one at
a time, so pruning a 4 GB file never holds 4 GB in memory. Diffusers folders are presented under
LDM names, so the rest of sdkd sees one format.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Callable, Iterable

import torch

from .convert import EMA, EMA_UNET, NOT_WEIGHTS, TEXT, UNET, VAE, PrefixMap, ema_twin, unet_map, vae_map
from .errors import SdkdError
from .portable import MIDDLE, has_identity_middle
from .source import Source

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class SafetensorsSource:
    """A `.safetensors` file read through `safe_open` (memory-mapped, one tensor at a time)."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        try:
            self._f = safe_open(str(path), framework="pt", device="cpu")
        except Exception as e:  # safetensors raises its own error types, varying by version
            raise SdkdError(f"{path.name}: corrupt or truncated safetensors file ({e}); re-download or re-export it") from e
        self.metadata = dict(self._f.metadata() or {})
        self._keys = list(self._f.keys())

    def keys(self) -> list[str]:
        return self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._f.get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        return SAFETENSORS_DTYPES[self._f.get_slice(key).get_dtype()]

    def get(self, key: str) -> torch.Tensor:
        return self._f.get_tensor(key)


class DictSource:
    """Tensors already in memory (a loaded pickle, or a state dict built in code)."""

    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
        self._t = tensors
        self.metadata = dict(metadata or {})

    def keys(self) -> list[str]:
        return list(self._t)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._t[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._t[key].dtype

    def get(self, key: str) -> torch.Tensor:
        return self._t[key]


class RenamedSource:
    """Another source seen under new names, with an optional per-key transform applied on read."""

    def __init__(self, base: Source, names: dict[str, str],
                 transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
                 metadata: dict[str, str] | None = None, shapes: dict[str, tuple[int, ...]] | None = None,
                 has_ema: bool = False, portable: bool = False):
        self._base, self._names, self._transform = base, names, transform  # new name -> base name
        self._shapes = shapes or {}
        self.has_ema = has_ema  # the underlying file carries EMA weights (`has_ema_weights`)
        self.portable = portable  # the file's identity middle block is hidden (`portable.has_identity_middle`)
        self.metadata = base.metadata if metadata is None else metadata

    def keys(self) -> list[str]:
        return list(self._names)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes.get(key) or self._base.shape(self._names[key])

    def dtype(self, key: str) -> torch.dtype:
        return self._base.dtype(self._names[key])

    def get(self, key: str) -> torch.Tensor:
        t = self._base.get(self._names[key])
        return self._transform(key, t) if self._transform else t


class ChainSource:
    """Several sources side by side (the parts of a diffusers folder); metadata: given, else the parts' merged."""

    def __init__(self, parts: list[Source], metadata: dict[str, str] | None = None):
        self._owner = {k: p for p in parts for k in p.keys()}
        self.metadata = dict(metadata if metadata is not None else {k: v for p in parts for k, v in p.metadata.items()})

    def keys(self) -> list[str]:
        return list(self._owner)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._owner[key].shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return self._owner[key].dtype(key)

    def get(self, key: str) -> torch.Tensor:
        return self._owner[key].get(key)


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def unsafe_pickle(path: Path, reason: str) -> str:
    """Why a pickle that needs code to load is refused and how to convert it safely, in sdkd's words only (what the
    file names is taken from torch's refusal `reason`, nothing else of it)."""
    named = _GLOBAL.search(reason)
    what = f"the Python object {named[1]}" if named else "Python objects besides tensors"
    return (f"{path.name}: refused: this .ckpt is a pickle that needs {what} rebuilt, which means running code the file "
            "chooses, and sdkd never runs code from a model file. Get the model as .safetensors from where you got it, "
            "or convert it to .safetensors inside a throwaway sandbox (a container or VM that holds none of your files "
            "or keys), then pass the .safetensors file")


def load_pickle(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.ckpt`/`.pt`/`.bin` through torch's weights-only unpickler (never runs code from the file)."""
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        raise SdkdError(unsafe_pickle(path, str(e))) from None  # torch's own text advises the unsafe way: never shown
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError) as e:
        raise SdkdError(f"{path.name}: corrupt or truncated checkpoint ({str(e).splitlines()[0][:200]}); re-download it") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise SdkdError(f"{path.name}: not a model checkpoint (the pickle holds a {type(obj).__name__}, not a state dict)")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def open_file(path: Path) -> Source:
    """A single weights file as a source, by suffix."""
    if path.suffix == ".safetensors":
        return SafetensorsSource(path)
    if path.suffix in PICKLE_SUFFIXES:
        return DictSource(load_pickle(path))
    raise SdkdError(f"{path.name}: unsupported file type {path.suffix!r}; give a .safetensors, .ckpt or a diffusers folder")


def _weights_in(folder: Path, stem: str) -> Path | None:
    """The weights file of one diffusers component folder (safetensors preferred, fp16 variants accepted)."""
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors", f"{stem}.bin", f"{stem}.fp16.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def open_diffusers(folder: Path) -> Source:
    """A diffusers pipeline folder as one LDM-named source (UNet, VAE and text encoder where present)."""
    from .configs import topology_from_diffusers

    parts: list[Source] = []
    unet_file = _weights_in(folder / "unet", "diffusion_pytorch_model")
    if unet_file is None:
        raise SdkdError(f"{folder}: not a diffusers pipeline folder (no unet/diffusion_pytorch_model.safetensors)")
    topo = topology_from_diffusers(json.loads((folder / "unet" / "config.json").read_text()))
    parts.append(_from_diffusers(open_file(unet_file), unet_map(topo), UNET))
    vae_file = _weights_in(folder / "vae", "diffusion_pytorch_model")
    if vae_file:
        cfg = json.loads((folder / "vae" / "config.json").read_text())
        parts.append(_from_diffusers(open_file(vae_file), vae_map(len(cfg["block_out_channels"]), cfg["layers_per_block"]), VAE))
    te_file = _weights_in(folder / "text_encoder", "model") or _weights_in(folder / "text_encoder", "pytorch_model")
    if te_file:
        te = open_file(te_file)
        # transformers < 5 saves `text_model.*`, 5.x drops that prefix: sdkd's LDM names always have it
        parts.append(RenamedSource(te, {TEXT + "text_model." + k.removeprefix("text_model."): k for k in te.keys()}))
    metadata = dict(parts[0].metadata)
    return ChainSource(parts, metadata)


def _from_diffusers(src: Source, pmap: PrefixMap, prefix: str) -> RenamedSource:
    """A diffusers-named component seen under LDM full-checkpoint names."""
    names, shapes = {}, {}
    for k in src.keys():
        ldm = pmap.to_ldm(k)
        if ldm is None:
            raise SdkdError(f"unexpected diffusers key {k!r}: the folder's config does not describe these weights")
        names[prefix + ldm] = k
        if pmap.needs_reshape(ldm) and len(src.shape(k)) == 2:
            shapes[prefix + ldm] = (*src.shape(k), 1, 1)

    def to_ldm_shape(key: str, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(shapes[key]) if key in shapes else t

    return RenamedSource(src, names, to_ldm_shape, shapes=shapes)


def has_ema_weights(keys: Iterable[str]) -> bool:
    """True if the keys hold an EMA copy of the UNet; LitEma's `model_ema.decay`/`num_updates` counters alone are not one."""
    return any(k.startswith(EMA_UNET) for k in keys)


def normalise(src: Source, ema: bool = False) -> Source:
    """LDM names as sdkd uses them: old text-encoder names fixed, EMA weights swapped in if asked, EMA copies,
    non-weight buffers (`NOT_WEIGHTS`) and a portable student's identity middle block hidden."""
    keys = src.keys()
    present = set(keys)
    has_ema = has_ema_weights(keys)
    if ema and not has_ema:
        counters = " (only the EMA counters model_ema.decay/num_updates)" if any(k.startswith(EMA) for k in keys) else ""
        raise SdkdError(f"--ema was given but this checkpoint has no EMA weights{counters}; drop --ema")
    names: dict[str, str] = {}
    without_twin: list[str] = []
    for k in keys:
        if k.startswith(EMA):
            continue
        new = k
        if k.startswith(TEXT) and not k.startswith(TEXT + "text_model."):
            new = TEXT + "text_model." + k[len(TEXT):]  # pre-2022 transformers layout
        if new in NOT_WEIGHTS:
            continue
        names[new] = k
        if ema and k.startswith(UNET):
            twin = ema_twin(k[len(UNET):])
            if twin in present:
                names[new] = twin
            else:
                without_twin.append(k)
    if without_twin:  # a half-EMA UNet is neither model: refuse rather than mix them silently
        raise SdkdError(f"--ema was given but the EMA copy is incomplete: {len(without_twin)} UNet weights have none "
                        f"(e.g. {without_twin[0]}); drop --ema to use the regular weights")
    portable = has_identity_middle(RenamedSource(src, names))
    if portable:
        names = {k: v for k, v in names.items() if not k.startswith(MIDDLE)}
    return RenamedSource(src, names, has_ema=has_ema, portable=portable)


SHIPPED_DIR = Path(__file__).parent / "models"
SHORT_NAMES = {"demo": SHIPPED_DIR / "demo-teacher.safetensors"}  # models sdkd ships, by the name every command accepts


def resolve(path: str | Path) -> Path:
    """The file a model argument names: the path itself, or a shipped model's file when no such path exists."""
    p = Path(path).expanduser()
    return SHORT_NAMES[str(path)] if not p.exists() and str(path) in SHORT_NAMES else p


def open_model(path: str | Path, ema: bool = False) -> Source:
    """Any supported model file or diffusers folder (or a shipped model's short name), LDM-named and normalised."""
    p = resolve(path)
    if not p.exists():
        raise SdkdError(f"{p}: no such file or folder")
    return normalise(open_diffusers(p) if p.is_dir() else open_file(p), ema=ema)


def unet_keys(src: Source) -> list[str]:
    """The UNet's keys without the `model.diffusion_model.` prefix."""
    return [k[len(UNET):] for k in src.keys() if k.startswith(UNET)]
