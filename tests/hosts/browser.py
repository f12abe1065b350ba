"""Drive sdkd's tab in a real headless Chromium (Debian's, through Playwright; no browser download).

Run in the browser venv, one JSON line out:
  python browser.py prune URL TAB_ID CHECKPOINT SCREENSHOT VARIANT...   statuses after each Prune click
  python browser.py distil-cancel URL TAB_ID CHECKPOINT SCREENSHOT NAME  Distil, then the web UI's Interrupt
"""

import json
import sys
import time

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"


def launch(p):
    """Debian's Chromium, headless, and one page."""
    browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
    return browser, browser.new_page(viewport={"width": 1280, "height": 1400})


def open_tab(page, url: str, tab: str, checkpoint: str):
    """The web UI's tab (a button in gradio 3, a tab in gradio 4) with `checkpoint` picked in sdkd's dropdown."""
    page.goto(url, timeout=120_000)
    page.get_by_role("tab", name=tab, exact=True).or_(page.get_by_role("button", name=tab, exact=True)).first.click(
        timeout=120_000)
    root = page.locator(f"#tab_{tab}")
    dropdown = root.locator("#sdkd_checkpoint input")
    dropdown.click()
    dropdown.fill(checkpoint)
    page.locator("ul.options li", has_text=checkpoint).first.click()
    return root


def wait_status(page, status, before: str, timeout_ms: int = 300_000) -> str:
    """The status box's text once a job has replaced `before` with its result."""
    page.wait_for_function("([el, old]) => el.value && el.value !== old && !/^(Running|Queued)/.test(el.value)",
                           arg=[status.element_handle(), before], timeout=timeout_ms)
    return status.input_value()


def prune_all(url: str, tab: str, checkpoint: str, shot: str, variants: list[str]) -> dict:
    """Press Prune once per variant; the status text after each."""
    out = {}
    with sync_playwright() as p:
        browser, page = launch(p)
        try:
            root = open_tab(page, url, tab, checkpoint)
            status = root.locator("#sdkd_status textarea")
            for v in variants:
                root.locator(f'[data-testid="{v}-radio-label"]:visible').first.click()
                before = status.input_value()
                root.locator("#sdkd_prune").click()
                out[v] = wait_status(page, status, before)
        finally:
            page.screenshot(path=shot, full_page=True)
            browser.close()
    return out


def distil_cancel(url: str, tab: str, checkpoint: str, shot: str, name: str) -> dict:
    """Start a long Distil (tiny, built-in prompts, 64 px), press the web UI's Interrupt once it trains, report."""
    with sync_playwright() as p:
        browser, page = launch(p)
        try:
            root = open_tab(page, url, tab, checkpoint)
            status = root.locator("#sdkd_status textarea")
            root.get_by_role("tab", name="Distil").or_(root.get_by_role("button", name="Distil", exact=True)).first.click()
            root.locator('[data-testid="tiny-radio-label"]:visible').first.click()
            for label, value in (("Built-in prompts", "4"), ("Steps", "100000"), ("Resolution", "64")):
                box = root.get_by_label(label, exact=True).locator("visible=true").first
                box.fill(value)
                box.press("Tab")
            root.locator("[placeholder*='-kd']:visible").first.fill(name)
            before = status.input_value()
            root.locator("#sdkd_distill").click()
            seen, end = "", time.monotonic() + 300
            while time.monotonic() < end:  # until the trainer reports steps in A1111's progress
                seen = page.request.get(f"{url}/sdapi/v1/progress").json().get("textinfo") or ""
                if seen.startswith("sdkd") and any(w in seen for w in ("train", "distil", "step")):
                    break
                time.sleep(1)
            time.sleep(3)
            page.request.post(f"{url}/sdapi/v1/interrupt")
            t = time.monotonic()
            result = wait_status(page, status, before)
            return {"progress_at_interrupt": seen, "status": result, "stopped_after_s": round(time.monotonic() - t, 1)}
        finally:
            page.screenshot(path=shot, full_page=True)
            browser.close()


MODES = {"prune": lambda a: prune_all(*a[:4], a[4:]), "distil-cancel": lambda a: distil_cancel(*a)}

if __name__ == "__main__":
    print(json.dumps(MODES[sys.argv[1]](sys.argv[2:])))
