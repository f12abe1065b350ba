"""Load sdkd's example workflows in ComfyUI's own page (headless Debian Chromium through Playwright) and print, as one
JSON line, the API prompt the page makes of each (`app.graphToPrompt()`: what its Queue button sends).

Run in the browser venv:  python comfy_page.py URL NAME...
"""

import json
import sys

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"

LOAD = """async (name) => {
    const app = window.comfyAPI.app.app;
    const flow = await (await fetch(`/api/workflow_templates/sdkd/${name}.json`)).json();
    await app.loadGraphData(flow);
    return (await app.graphToPrompt()).output;
}"""


REGISTERED = """async (names) => {
    const known = window.LiteGraph?.registered_node_types;
    if (!known) return false;
    for (const name of names) {
        const flow = await (await fetch(`/api/workflow_templates/sdkd/${name}.json`)).json();
        if (flow.nodes.some((n) => !(n.type in known))) return false;
    }
    return true;
}"""


def main(url: str, names: list[str]) -> None:
    """Open the page once, load each workflow in turn, print what it made of them."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url, timeout=120_000)
        page.wait_for_function("window.comfyAPI?.app?.app?.graph", timeout=120_000)
        # the graph exists before the node definitions are registered: a workflow loaded earlier gets nodes without a
        # class (its prompt says UNKNOWN), so wait until every type the workflows use is known to the page
        page.wait_for_function(REGISTERED, arg=names, timeout=120_000)
        print(json.dumps({name: page.evaluate(LOAD, name) for name in names}))
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
