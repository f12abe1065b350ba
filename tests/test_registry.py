"""pyproject.toml as the ComfyUI registry (comfy-cli `comfy node publish`) reads it: [project] and [tool.comfy]."""

from __future__ import annotations

import re
import tomllib

from PIL import Image

from host_code import ROOT

META = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_project_table_has_what_the_registry_requires():
    """name: the node id (`comfy node install <id>`): under 100 characters, letters/digits/-_. only, no two special
    characters in a row, starting with a letter; version X.Y.Z; license as {file} or {text}; Repository URL."""
    p = META["project"]
    assert len(p["name"]) < 100 and re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?![-_.]))*", p["name"])
    assert "comfyui" not in p["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", p["version"])
    assert set(p["license"]) in ({"file"}, {"text"}) and all(p["license"].values())
    if "file" in p["license"]:
        assert (ROOT / p["license"]["file"]).is_file()
    assert p["description"].strip()
    assert re.fullmatch(r"https://\S+", p["urls"]["Repository"])


def test_tool_comfy_names_the_publisher_and_an_icon_in_the_repository():
    """[tool.comfy]: PublisherId (the registry account, lowercase), DisplayName, and an Icon URL: a square image of at
    most 400 px, here a file of this repository served by its host."""
    c = META["tool"]["comfy"]
    assert re.fullmatch(r"[a-z][a-z0-9-]*", c["PublisherId"]) and c["DisplayName"].strip()
    repo = META["project"]["urls"]["Repository"]
    assert c["Icon"].startswith(f"{repo}/raw/") and c["Icon"].endswith((".png", ".svg", ".jpg", ".gif"))
    path = ROOT / c["Icon"].split("/raw/", 1)[1].split("/", 1)[1]
    with Image.open(path) as icon:
        assert icon.width == icon.height <= 400

