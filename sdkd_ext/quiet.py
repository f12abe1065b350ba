"""The one place where sdkd silences library messages that are harmless for it and would repeat on every model load.

Installed once by each front end that loads models over and over (the tab's hosts); each filter matches one known
message exactly, so anything else a library says still reaches the console. The messages, and why each is harmless:
- diffusers (models/modeling_utils.py, >= 0.35): "There are modules in <Model> that should be kept in float32: [].
  Casting directly with `to()` ..." on every `.to(dtype)` of a UNet or VAE built from a config, even when the list
  of modules to keep is empty, as it is for SD1.x models: nothing is cast that should not be.
- transformers (utils/import_utils.py, 5.x): "`CLIPImageProcessor` requires torchvision (not installed); falling
  back to ..." when diffusers' pipeline module is imported without torchvision: sdkd never uses an image processor.
- numpy 2 DeprecationWarning "__array__ implementation doesn't accept a copy keyword" raised inside diffusers'
  schedulers when they build sigma tables from a torch tensor: numpy falls back to a copy, which is what is wanted.
"""

from __future__ import annotations

import logging
import re
import warnings

# logger name -> the message start it drops (only these; other messages of the same logger still show).
LOG_FILTERS = {
    "diffusers.models.modeling_utils": re.compile(r"There are modules in \w+ that should be kept in float32: \[\]\."),
    "transformers.utils.import_utils": re.compile(r"`\w+ImageProcessor` requires torchvision \(not installed\)"),
}
_installed = False


class _Drop(logging.Filter):
    """Drops the records of one logger whose message matches `pattern`."""

    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def quiet_libraries() -> None:
    """Install the filters above (once per process; calling again does nothing)."""
    global _installed
    if _installed:
        return
    _installed = True
    for name, pattern in LOG_FILTERS.items():
        logging.getLogger(name).addFilter(_Drop(pattern))
    warnings.filterwarnings("ignore", message=r"__array__ implementation doesn't accept a copy keyword",
                            category=DeprecationWarning, module=r"diffusers\.schedulers")
