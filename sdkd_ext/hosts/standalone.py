"""The standalone web app: the same tab as in A1111, over plain model folders."""

from __future__ import annotations

from pathlib import Path

from .base import FolderHost


def standalone_host(models: list[Path], loras: list[Path]) -> FolderHost:
    """The standalone app's host: the given folders, and the shipped demo teacher listed (marked as such)."""
    return FolderHost([p.expanduser() for p in models], [p.expanduser() for p in loras], demo=True)


def launch(models: list[Path], loras: list[Path], host: str = "127.0.0.1", port: int = 7870) -> None:
    """Serve the sdkd tab on `host:port` (local only by default)."""
    from ..quiet import quiet_libraries
    from ..ui import build_tab

    quiet_libraries()
    app = build_tab(standalone_host(models, loras))
    app.queue().launch(server_name=host, server_port=port)
