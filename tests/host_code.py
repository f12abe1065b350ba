"""The hosts' own code, read at test time from the unmodified source archives (never copied into the project).

Tests call a host's real function where it runs standalone (the function is taken out of its file
with `ast` and given stand-ins for the host modules it names), so metadata, task ids and node
results reach sdkd in exactly the form the host produces. Without the archives the tests skip.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import sys
import tarfile
import types
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHIVES = Path(os.environ.get("SDKD_HOST_ARCHIVES", ROOT.parent / "shared" / "hosts"))
HOSTS = {"a1111": "a1111-v1.10.1", "forge": "forge-dfdcbab", "comfyui": "comfyui-0.3.64"}


@functools.cache
def _source(host: str, path: str) -> str | None:
    """Text of `path` inside a host's archive, or None without the archive."""
    archive = ARCHIVES / f"{HOSTS[host]}.tar.gz"
    if not archive.is_file():
        return None
    with tarfile.open(archive) as tar:
        return tar.extractfile(f"{HOSTS[host]}/{path}").read().decode("utf-8")


def host_source(host: str, path: str) -> str:
    """A host's source file (the test skips when the archive is not there)."""
    text = _source(host, path)
    if text is None:
        pytest.skip(f"host archive {HOSTS[host]}.tar.gz not in {ARCHIVES} (set SDKD_HOST_ARCHIVES)")
    return text


def host_function(host: str, path: str, name: str, **env: object) -> Callable:
    """The top-level function `name` of a host file, compiled on its own with `env` as its globals."""
    tree = ast.parse(host_source(host, path))
    (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    namespace: dict = {"__name__": f"{host}_{name}", **env}
    exec(compile(ast.Module([fn], type_ignores=[]), f"{HOSTS[host]}/{path}", "exec"), namespace)
    return namespace[name]


def host_module(host: str, path: str, name: str, monkeypatch) -> types.ModuleType:
    """A whole host file imported as module `name` (its own imports resolve against sys.modules, stand-ins included)."""
    module = types.ModuleType(name)
    module.__file__ = f"{HOSTS[host]}/{path}"
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(host_source(host, path), module.__file__, "exec"), module.__dict__)
    return module


def module_from_file(name: str, path: Path) -> types.ModuleType:
    """A script (a benchmark, install.py) imported as module `name`, so tests call its functions."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # registered before it runs, as an import does: its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def custom_node_package(monkeypatch) -> types.ModuleType:
    """The checkout imported as ComfyUI imports a custom node folder: a package whose __init__ registers the nodes."""
    spec = importlib.util.spec_from_file_location("sdkd_node", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    package = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "sdkd_node", package)
    spec.loader.exec_module(package)
    return package
