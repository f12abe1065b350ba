"""Names typed into a UI (the tab, ComfyUI nodes) become files only inside their folder.

A UI name is a plain file name: no folders, no way out of the model folder, nothing a file system
treats specially. `path_in_folder` is the one place where such a name turns into a path; every
front end passes the label of the widget the name came from, so the refusal speaks the user's terms.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import OutputExists, SdkdError
from .terms import labels

# Names Windows reserves for devices, with or without an extension (a web UI folder may be on a Windows share).
RESERVED = {"con", "prn", "aux", "nul", *(f"{d}{i}" for d in ("com", "lpt") for i in range(1, 10))}
MAX_BYTES = 200  # below every file system's 255, leaving room for the suffix and sdkd's temp-name prefix
_BAD_CHARS = re.compile(r'[\x00-\x1f<>:"|?*]')  # control characters and what Windows refuses (':' also drive letters)


class UnsafeName(SdkdError):
    """A UI name that cannot be a file inside its folder; carries the widget, the name and why."""

    def __init__(self, widget: str, name: str, reason: str):
        self.widget, self.name, self.reason = widget, name, reason
        super().__init__(f"{widget} {name!r}: {reason}")


def _problem(name: str) -> str | None:
    """Why `name` cannot be a plain file name, or None when it can."""
    if not name:
        return "give a name"
    if "/" in name or "\\" in name:
        return "give a plain name without folders ('/' or '\\'); the file is saved in its usual folder"
    if name.startswith("."):
        return "a name may not start with '.' ('..' leads out of the folder, '.name' is hidden)"
    if _BAD_CHARS.search(name):
        return "remove the characters < > : \" | ? * and control characters (':' would name a drive)"
    if name != name.rstrip(". "):
        return "a name may not end with a dot or a space"
    if name.split(".")[0].strip().lower() in RESERVED:
        return "that name is reserved for a device on Windows; choose another"
    if len(name.encode("utf-8")) > MAX_BYTES:
        return f"too long (at most {MAX_BYTES} bytes)"
    return None


def path_in_folder(name: str, folder: Path, widget: str, suffix: str = "", inputs: tuple[Path, ...] = ()) -> Path:
    """`folder/<name><suffix>` for a plain UI name (`suffix` added unless the name already ends with it);
    refuses, naming `widget`, anything that is not a plain name, would land elsewhere (a link included), or is
    one of the job's `inputs`."""
    name = name.strip()
    problem = _problem(name)
    if problem:
        raise UnsafeName(widget, name, problem)
    path = folder / (name if not suffix or name.endswith(suffix) else name + suffix)
    if path.is_symlink() or path.resolve().parent != folder.resolve():
        raise UnsafeName(widget, name, "that name is a link to a file elsewhere; choose another")
    if any(path.resolve() == p.resolve() for p in inputs):
        raise UnsafeName(widget, name, "that is the file this job reads; sdkd never overwrites its input: choose another")
    return path


@dataclass(frozen=True)
class Output:
    """Where a UI action (tab or node) writes and the widgets that decide it, so its messages speak the UI's terms."""

    folder: Path
    where: str  # the folder as the user knows it, e.g. "your checkpoint folder"
    name_widget: str
    overwrite_widget: str | None = None
    widgets: dict[str, str] = field(default_factory=dict)  # CLI flag the core names -> label of the UI's widget for it

    @classmethod
    def of(cls, job: str, front: str, folder: Path, where: str, name: str = "--out") -> "Output":
        """The output of `job` in front end `front` ("tab" or "node") named by the widget for flag `name`, its widgets
        named by `sdkd_ext.terms`."""
        words = labels(job, front)
        return cls(folder, where, words.get(name, name), words.get("--overwrite"), words)

    def path(self, name: str, default: str, suffix: str = "", inputs: tuple[Path, ...] = ()) -> Path:
        """The file a name typed into `name_widget` (blank: `default`) stands for, inside `folder`; never an input."""
        return path_in_folder((name or "").strip() or default, self.folder, self.name_widget, suffix, inputs)

    def listed(self, path: Path) -> str:
        """A file written inside the folder as the host's model list names it (relative, '/'-separated)."""
        return path.relative_to(self.folder).as_posix()

    def shown(self, path: Path) -> str:
        """`path` as the UI shows it: relative to the folder, which is named in words."""
        try:
            return f"{path.relative_to(self.folder)} in {self.where}"
        except ValueError:
            return path.name

    def reword(self, message: str) -> str:
        """A core message (worded for the CLI) in the UI's terms: flags and arguments become the widgets' labels,
        paths inside the folder become relative ones."""
        labels = {"--out": self.name_widget, **({"--overwrite": self.overwrite_widget} if self.overwrite_widget else {}),
                  **self.widgets}
        named = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, sorted(labels, key=len, reverse=True))) + r")(?![\w-])")
        message = named.sub(lambda m: repr(labels[m[0]]), message)
        return message.replace(f"{self.folder}{os.sep}", "")

    @contextmanager
    def worded(self) -> Iterator[None]:
        """Re-raise the core's errors in the UI's terms; an existing output names the widgets that avoid it."""
        try:
            yield
        except OutputExists as e:
            tick = f" or turn on {self.overwrite_widget!r}" if self.overwrite_widget else ""
            fix = f"choose another {self.name_widget}{tick}"
            raise SdkdError(f"{self.shown(e.path)} already exists; {fix}") from None
        except SdkdError as e:
            raise SdkdError(self.reword(str(e))) from None

