"""ComfyUI adapter: sdkd as custom nodes over the core functions, one module per node family.

`common` holds what the nodes share (ComfyUI's folders, progress bar and interrupt); `files` writes model files
(prune, rebase, LoRA port) and inspects them; `model` prunes a loaded MODEL in memory; `training` distils and
trains LoRAs; `fewstep` trains few-step LoRAs and makes a checkpoint fast; `reports` compares and benchmarks.
"""

from .fewstep import SdkdFewStepLora, SdkdMakeItFast
from .files import SdkdInspect, SdkdPortLora, SdkdPrune, SdkdRebase
from .model import SdkdPruneModel
from .reports import SdkdBench, SdkdCompare
from .training import SdkdDistil, SdkdTrainLora

# Node id -> (class, title in ComfyUI's menu); ids are what saved workflows name, so they never change.
NODES = {
    "SdkdMakeItFast": (SdkdMakeItFast, "sdkd: make it fast (tiny student + 4-step LoRA)"),
    "SdkdPrune": (SdkdPrune, "sdkd: prune to BK-SDM student (file)"),
    "SdkdPruneModel": (SdkdPruneModel, "sdkd: prune MODEL to BK-SDM student (in memory)"),
    "SdkdDistil": (SdkdDistil, "sdkd: distil a BK-SDM student"),
    "SdkdTrainLora": (SdkdTrainLora, "sdkd: train LoRA"),
    "SdkdFewStepLora": (SdkdFewStepLora, "sdkd: train few-step (LCM) LoRA"),
    "SdkdPortLora": (SdkdPortLora, "sdkd: port teacher LoRA to a student"),
    "SdkdRebase": (SdkdRebase, "sdkd: rebase a student onto a community checkpoint"),
    "SdkdCompare": (SdkdCompare, "sdkd: compare teacher and students"),
    "SdkdBench": (SdkdBench, "sdkd: benchmark teacher and students"),
    "SdkdInspect": (SdkdInspect, "sdkd: inspect checkpoint"),
}
NODE_CLASS_MAPPINGS = {k: cls for k, (cls, _) in NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {k: title for k, (_, title) in NODES.items()}
