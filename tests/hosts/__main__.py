"""Run the real-host checks: `python -m tests.hosts comfyui a1111 forge` (run by .ci/run, not by plain pytest)."""

import importlib
import sys

from .harness import Report, exit_code

HOSTS = ("comfyui", "a1111", "forge")

if __name__ == "__main__":
    names = sys.argv[1:] or list(HOSTS)
    unknown = [n for n in names if n not in HOSTS]
    if unknown:
        sys.exit(f"unknown host {unknown}; choose from {', '.join(HOSTS)}")
    report = Report()
    for name in names:
        with report.check(name, "all-checks-ran") as r:
            importlib.import_module(f"tests.hosts.{name}").run(report)
    sys.exit(exit_code(report))
