"""ComfyUI custom-node entry point: the sdkd nodes live in sdkd_ext.hosts.comfyui.

ComfyUI imports this folder as a package (whatever its name); test runners may import this file
without one, and then there is nothing to register. `WEB_DIRECTORY` holds the node's front-end
script (outside `javascript/`, which A1111 loads as plain scripts).
"""

if __package__:
    from .sdkd_ext.hosts.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    WEB_DIRECTORY = "./web/comfyui"
    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
