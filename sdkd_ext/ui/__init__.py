"""The sdkd tab: one gradio UI for A1111, Forge and the standalone app, over the same core functions.

`jobs` turns the widgets' values into core calls (no gradio there), `facts` says what a file is and what the
planner expects before a job, `run` runs a job with the host's lock, progress and cancel (and streams a long one),
`tab` builds the Blocks.
"""

from .jobs import (DISTIL_WIDGETS, LORA_WIDGETS, bench_job, compare_job, distil_estimate, distill_job, file_text,
                   lora_estimate, lora_job, port_job, prune_job, rebase_job)
from .run import Frame, JobControl, Live, run_in_host, stream
from .tab import before_click, build_tab, load_checkpoint

__all__ = ["DISTIL_WIDGETS", "LORA_WIDGETS", "Frame", "JobControl", "Live", "before_click", "bench_job", "build_tab",
           "compare_job", "distil_estimate", "distill_job", "file_text", "load_checkpoint", "lora_estimate", "lora_job",
           "port_job", "prune_job", "rebase_job", "run_in_host", "stream"]
