"""Run a real web UI from its unmodified source archive: unpack, build its venv once, serve on loopback, stop by PID.

Only the standard library here, so the harness works before any venv exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parents[2]
ARCHIVES = Path(os.environ.get("SDKD_HOST_ARCHIVES", REPO.parent / "shared" / "hosts"))
# No dot in the name: gradio 3 refuses to serve files under a hidden folder (A1111 then has no javascript).
SCRATCH = Path(os.environ.get("SDKD_HOST_SCRATCH", REPO / "host-scratch"))
ARTIFACTS = REPO / "ci-artifacts"
PROBE_KEYS = Path(__file__).parent / "probe" / "probe_keys.py"
TORCH = "torch==2.13.0"
TORCHVISION = "torchvision==0.28.0"
PYTHON = os.environ.get("SDKD_HOST_PYTHON", "python3")


def log(msg: str) -> None:
    """Progress of the harness itself (setup steps), flushed so CI shows it as it happens."""
    print(f"    [hosts] {msg}", flush=True)


def unpack(archive: str) -> Path:
    """The host's source tree under the scratch folder, extracted once from its read-only archive."""
    dest = SCRATCH / archive
    src = dest / "src"
    stamp = dest / ".unpacked"
    if not stamp.exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        with tarfile.open(ARCHIVES / f"{archive}.tar.gz") as tar:
            tar.extractall(dest, filter="data")
        (dest / archive).rename(src)
        for p in src.rglob("*"):  # the archive's files are read-only; hosts write beside their sources
            p.chmod(p.stat().st_mode | 0o200)
        stamp.touch()
    return src


def clear(paths) -> None:
    """Remove files and folders left by an earlier run in a reused scratch folder."""
    for p in paths:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


# Full-size students are 1-3 GB each and an interrupted distil's training state 3.7 GB: every check deletes what it
# wrote once it is checked, so a host's checks peak at a few GB; SDKD_HOST_KEEP=1 keeps everything for a look.
KEEP = os.environ.get("SDKD_HOST_KEEP") == "1"


def discard(*paths: Path) -> None:
    """Delete files and folders a check wrote and has checked (unless SDKD_HOST_KEEP=1)."""
    if not KEEP:
        clear([p for p in paths if p.is_symlink() or p.exists()])


def disk_bytes(root: Path) -> int:
    """Bytes the files under root take on disk, each hard-linked file once."""
    seen, total = set(), 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(folder, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


@contextlib.contextmanager
def disk_budget(report: Report, host: str, run: Path, need_gib: float) -> Iterator[None]:
    """A `disk-space` check that the disk has the free GiB the host's checks need at their peak (measured, in its spec;
    raises if not, so the host stops with a message instead of a write failing halfway), then a 2 s sampler while they
    run, printing `DISK host free=start->lowest GiB run_peak=GiB` (the run folder holds what the checks write)."""
    SCRATCH.mkdir(parents=True, exist_ok=True)
    start = shutil.disk_usage(SCRATCH).free
    with report.check(host, "disk-space") as r:
        r["figure"] = f"free={start / 2**30:.1f}GiB need={need_gib:g}GiB"
        r["ok"] = start >= need_gib * 2**30
    if start < need_gib * 2**30:
        raise RuntimeError(f"{start / 2**30:.1f} GiB free beside {SCRATCH}, and {host}'s checks write up to "
                           f"{need_gib:g} GiB: free some disk space or point SDKD_HOST_SCRATCH at a larger disk")
    low, peak, done = [start], [0], threading.Event()

    def sample() -> None:
        while True:
            low[0] = min(low[0], shutil.disk_usage(SCRATCH).free)
            peak[0] = max(peak[0], disk_bytes(run))
            if done.wait(2):
                return

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        print(f"DISK {host} free={start / 2**30:.1f}->{low[0] / 2**30:.1f}GiB run_peak={peak[0] / 2**30:.1f}GiB", flush=True)


def constraints(folder: Path) -> Path:
    """A pip constraints file holding torch (and torchvision) at the CPU builds this machine has."""
    path = folder / "constraints.txt"
    path.write_text(f"{TORCH}\n{TORCHVISION}\n")
    return path


def pip(venv: Path, *args: str, log_to: Path) -> None:
    """pip in `venv`, output appended to a log; a failure raises with the log's tail."""
    with open(log_to, "a") as out:
        r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *args], stdout=out, stderr=subprocess.STDOUT,
                           env={**os.environ, "PIP_PROGRESS_BAR": "off", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    if r.returncode:
        raise RuntimeError(f"pip {' '.join(args)} failed:\n" + tail(log_to, 30))


def tail(path: Path, n: int) -> str:
    """The last n lines of a text file."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def patch_torchvision(venv: Path) -> None:
    """PyPI's torchvision is a CUDA build: guard its fake-op registrations so it imports beside CPU torch."""
    site = next((venv / "lib").glob("python3*/site-packages"))
    meta = site / "torchvision" / "_meta_registrations.py"
    if not meta.exists():
        return
    text = meta.read_text()
    guarded = re.sub(r'@torch\.library\.register_fake\("torchvision::(q?nms)"\)',
                     r'@(torch.library.register_fake("torchvision::\1") '
                     r'if __import__("torchvision.extension").extension._has_ops() else (lambda f: f))', text)
    meta.write_text(guarded)


def build_venv(name: str, requirements: str, extra: tuple[str, ...] = (), torch: bool = True) -> Path:
    """The venv `name` under the scratch folder, built once (rebuilt only when what it installs changes): our CPU
    torch and torchvision first (`torch`), then `requirements` (a requirements file's text), then `pip install
    *extra` (what a host's users add beside it); torch and torchvision stay held by a constraint at every step."""
    folder = SCRATCH / name
    venv = folder / "venv"
    stamp = venv / ".sdkd-built"
    first = (TORCH, TORCHVISION) if torch else ()
    digest = hashlib.sha256(json.dumps([first, requirements, extra]).encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True)
    cons, log_to, req_file = constraints(folder), folder / "pip.log", folder / "requirements.txt"
    req_file.write_text(requirements)
    for args in (first, ("-r", str(req_file)), extra):
        if args:
            pip(venv, "install", "-q", "-c", str(cons), *args, log_to=log_to)
    patch_torchvision(venv)
    stamp.write_text(digest)
    return venv


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A host's server process on loopback, its log in a file, stopped by its own PID."""

    cmd: list[str]
    cwd: Path
    log: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process in its own session, so stopping it reaches its children too."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "w")
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env={**os.environ, **self.env},
                                     start_new_session=True)

    def text(self) -> str:
        """Everything the server has logged so far."""
        return self.log.read_text(errors="replace")

    def wait(self, ready: Callable[["Server"], bool], timeout: float) -> None:
        """Poll `ready` until it holds; raise with the log's tail if the server died or took too long."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{tail(self.log, 40)}")
            with contextlib.suppress(OSError, ValueError):
                if ready(self):
                    return
            time.sleep(1)
        raise RuntimeError(f"server not ready after {timeout:.0f}s:\n{tail(self.log, 40)}")

    def cpu(self) -> float:
        """CPU seconds the server process (and its waited-for children) has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """SIGTERM the server's process group by its PID, SIGKILL if it lingers; logs the server's CPU time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            print(f"TIME server {self.log.name} cpu={self.cpu():.0f}s", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def get(self, path: str, timeout: float = 30) -> object:
        """GET a JSON answer."""
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def post(self, path: str, body: object, timeout: float = 600) -> object:
        """POST JSON, return the JSON answer; an HTTP error raises with its body."""
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"POST {path}: HTTP {e.code}: {e.read().decode(errors='replace')[:2000]}") from e


def cpu_seconds() -> float:
    """CPU time of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Report:
    """One `PASS|FAIL host check figure` line per check, and the wall/CPU time of each host's phases."""

    failed: int = 0
    passed: int = 0

    def line(self, ok: bool, host: str, check: str, figure: str) -> bool:
        """Print one result line; returns ok."""
        print(f"{'PASS' if ok else 'FAIL'} {host} {check} {figure}", flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        return ok

    @contextlib.contextmanager
    def check(self, host: str, name: str) -> Iterator[dict]:
        """A check whose body fills `figure` (and may set ok=False); an exception is a FAIL naming it."""
        res: dict = {"ok": True, "figure": ""}
        t = time.monotonic()
        try:
            yield res
        except Exception as e:  # a check that raises is a failed check, reported with its error
            res["ok"] = False
            first = (str(e).strip().splitlines() or [type(e).__name__])
            res["figure"] = (res["figure"] + " " if res["figure"] else "") + f"error: {type(e).__name__}: {first[0]}"
            print(f"    [hosts] {host} {name}: {e}", flush=True)
        self.line(bool(res["ok"]), host, name, f"{res['figure']} {time.monotonic() - t:.1f}s".strip())

    @contextlib.contextmanager
    def timed(self, host: str, phase: str) -> Iterator[None]:
        """Report a phase's wall and CPU seconds (CPU of this process plus waited-for children)."""
        t, c = time.monotonic(), cpu_seconds()
        try:
            yield
        finally:
            print(f"TIME {host} {phase} wall={time.monotonic() - t:.0f}s cpu={cpu_seconds() - c:.0f}s", flush=True)


def errors_in(log_text: str, needle: str) -> list[str]:
    """Tracebacks (as their last line) and error lines of a log that mention `needle` (e.g. sdkd's folder)."""
    hits, block = [], []
    for line in log_text.splitlines() + [""]:
        if block and (line.startswith((" ", "\t")) or not line.strip() and len(block) == 1):
            block.append(line)
            continue
        if block:  # the line after the indented frames is the exception itself
            if needle in "\n".join(block) + line:
                hits.append(line.strip() or block[-1].strip())
            block = []
        if line.startswith("Traceback"):
            block = [line]
        elif needle in line and re.search(r"Error|IMPORT FAILED|Cannot import|Exception", line):
            hits.append(line.strip())
    return hits


def python_of(venv: Path) -> str:
    """The venv's interpreter."""
    return str(venv / "bin" / "python")


def run_py(venv: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run the venv's python; return stdout, raise with the output on failure."""
    r = subprocess.run([python_of(venv), *args], capture_output=True, text=True, cwd=cwd,
                       env={**os.environ, **(env or {})})
    if r.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout


# A LoRA run that only has to produce a real sdkd LoRA: two steps at 64 px, a rate high enough to change images.
LORA_ARGS = ("--steps", "2", "--resolution", "64", "--lr", "1e-2", "--rank", "4", "--alpha", "4", "--device", "cpu")


def sdkd(*args: str) -> None:
    """Run the `sdkd` command of the dependency set running these checks (this interpreter's)."""
    r = subprocess.run([sys.executable, "-m", "sdkd_ext", *args], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"sdkd {' '.join(args)} failed: {(r.stderr or r.stdout).strip()[-1500:]}")


def exit_code(report: Report) -> int:
    """Process status for CI: non-zero when any check failed."""
    print(f"hosts: {report.passed} passed, {report.failed} failed", flush=True)
    return 1 if report.failed else 0

