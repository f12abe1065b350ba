"""A1111/Forge installer hook: add what sdkd needs without changing the web UI's pinned packages."""

import launch

# Versions that import and work beside A1111 1.10's pins (transformers 4.30.2, accelerate 0.21.0).
REQUIREMENTS = {"diffusers": "diffusers==0.31.0", "peft": "peft==0.13.2"}

for module, spec in REQUIREMENTS.items():
    if not launch.is_installed(module):
        launch.run_pip(f"install {spec}", f"sdkd requirement: {spec}")
