"""ComfyUI custom-node entry point: the sdkd nodes live in sdkd_ext.hosts.comfyui."""

from .sdkd_ext.hosts.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
