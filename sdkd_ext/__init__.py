"""sdkd: prune SD1.5 checkpoints into BK-SDM students, distil them, and export files every web UI loads."""

__version__ = "0.1.0"
