"""Writing outputs safely: a streaming safetensors writer, atomic renames, and never overwriting by accident."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from .checkpoint import SAFETENSORS_DTYPES, Source
from .errors import OutputExists, SdkdError
from .progress import ProgressFn, report

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_ST_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def parse_dtype(name: str) -> torch.dtype:
    """torch dtype for a CLI name (fp16, bf16, fp32)."""
    try:
        return DTYPES[name]
    except KeyError:
        raise SdkdError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}") from None


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    """Hex sha256 of a file (the same full-file hash A1111 shows)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Outputs:
    """A set of files written to temp names and renamed into place together, or removed on failure."""

    def __init__(self, overwrite: bool = False):
        self.overwrite = overwrite
        self._pending: list[tuple[Path, Path]] = []  # (temp, final)

    def check(self, final: Path) -> None:
        """Refuse an existing output unless overwriting was asked for."""
        if final.exists() and not self.overwrite:
            raise OutputExists(final)

    def temp(self, final: Path, is_dir: bool = False) -> Path:
        """A fresh temp path beside `final`, to be renamed onto it by `commit`."""
        self.check(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        prefix, suffix = f".{final.stem}.", f".tmp{final.suffix}"  # keep the suffix: readers choose by it
        if is_dir:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=final.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=final.parent)
            os.close(fd)
            tmp = Path(name)
            tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; outputs get the user's usual mode
        self._pending.append((tmp, final))
        return tmp

    def commit(self) -> None:
        """Move every temp file onto its final name (metadata-bearing files last is the caller's order)."""
        for tmp, final in self._pending:
            self.check(final)
            if final.is_dir() and tmp.is_dir():
                _remove(final)
            os.replace(tmp, final)
        self._pending.clear()

    def abort(self) -> None:
        """Delete every temp file; finals are untouched."""
        for tmp, _ in self._pending:
            _remove(tmp)
        self._pending.clear()


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(p: Path) -> None:
    """Delete a file or folder tree if it exists."""
    import shutil

    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()


@contextmanager
def atomic_outputs(overwrite: bool = False) -> Iterator[Outputs]:
    """Context in which outputs appear all at once at the end, or not at all."""
    out = Outputs(overwrite)
    try:
        yield out
        out.commit()
    except BaseException:
        out.abort()
        raise


Plan = list[tuple[str, tuple[int, ...], torch.dtype, Callable[[], torch.Tensor]]]


def plan_from(src: Source, names: dict[str, str], cast: Callable[[str, torch.dtype], torch.dtype]) -> Plan:
    """What to write: output name -> source key, with the output dtype chosen per key by `cast`."""
    return [(out, src.shape(key), cast(out, src.dtype(key)), (lambda k=key: src.get(k))) for out, key in names.items()]


def write_safetensors(path: Path, plan: Plan, metadata: dict[str, str] | Callable[[], dict[str, str]],
                      progress: ProgressFn | None = None) -> None:
    """Stream tensors into a safetensors file one at a time, so memory holds one tensor, not the model.

    `metadata` may be a callable: it is then called after the tensor data is written (e.g. to wait for a
    hash computed meanwhile) and the header, written last into reserved space, takes its result."""
    tensors: dict[str, object] = {}
    offset = 0
    for name, shape, dtype, _ in plan:
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        tensors[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    deferred = callable(metadata)
    first = _header(tensors, {} if deferred else metadata)
    reserved = len(first) + (_METADATA_ROOM if deferred else 0)
    reserved += -reserved % 8
    try:
        with open(path, "wb") as f:
            f.write(reserved.to_bytes(8, "little"))
            f.write(first.ljust(reserved))
            for i, (name, shape, dtype, get) in enumerate(plan):
                t = get().to(dtype).contiguous()
                if tuple(t.shape) != tuple(shape):
                    raise SdkdError(f"internal error: {name} has shape {tuple(t.shape)}, planned {shape}")
                f.write(t.reshape(-1).view(torch.uint8).numpy().data)
                report(progress, "write", i + 1, len(plan), name)
            if deferred:
                final = _header(tensors, metadata())
                if len(final) > reserved:
                    raise SdkdError(f"internal error: metadata needs {len(final)} header bytes, {reserved} reserved")
                f.seek(8)
                f.write(final.ljust(reserved))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise SdkdError(f"could not write {path.name}: {e.strerror or e}; free some disk space or choose another --out") from e


_METADATA_ROOM = 4096  # header bytes kept free for metadata that is known only after the data


def _header(tensors: dict[str, object], metadata: dict[str, str]) -> bytes:
    """The JSON header: metadata (all strings) and each tensor's dtype, shape and byte range."""
    return json.dumps({"__metadata__": {k: str(v) for k, v in metadata.items()}, **tensors}, separators=(",", ":")).encode()


def add_output_options(parser, out: str = "output path (.safetensors; its .yaml is written beside it)",
                       required: bool = True, dtype: str = "weights dtype (default fp16)",
                       overwrite: str = "replace existing outputs") -> None:
    """The CLI options of a command that writes weights: --out (`required`, or a default the help names), --dtype,
    --overwrite, each with the command's own help."""
    parser.add_argument("--out", required=required, help=out)
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"], help=dtype)
    parser.add_argument("--overwrite", action="store_true", help=overwrite)
