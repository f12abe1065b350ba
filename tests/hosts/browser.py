"""Drive sdkd's tab in a real headless Chromium (Debian's, through Playwright; no browser download).

Run in the browser venv, one JSON line out:
  python browser.py prune URL TAB_ID CHECKPOINT SCREENSHOT VARIANT...   statuses after each Prune click
  python browser.py distil-cancel URL TAB_ID CHECKPOINT SCREENSHOT NAME  Distil, then the web UI's Interrupt
  python browser.py distil-watch URL TAB_ID CHECKPOINT SHOTS NAME        Distil's curve and samples, Cancel, Load it now
"""

import json
import re
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


# How the tab's status box starts a job's last line (jobs that stream show their progress there before it).
FINAL = "^(Done|Cancelled|Stopped|Error|Unexpected|Loaded)"


def wait_status(page, status, before: str, timeout_ms: int = 300_000) -> str:
    """The status box's text once a job has replaced `before` with its final line."""
    page.wait_for_function("([el, old, final]) => el.value && el.value !== old && new RegExp(final).test(el.value)",
                           arg=[status.element_handle(), before, FINAL], timeout=timeout_ms)
    return status.input_value()


def settle(element, before: str, timeout: float = 180) -> str:
    """The element's text once a handler has replaced `before` and nothing changed it for 2 s; `before` itself if
    nothing replaced it within `timeout`."""
    end, text = time.monotonic() + timeout, element.inner_text()
    while time.monotonic() < end and text == before:
        time.sleep(0.5)
        text = element.inner_text()
    while text != before:
        time.sleep(2)
        if element.inner_text() == text:
            break
        text = element.inner_text()
    return text


# The Distil estimate before any checkpoint is picked (sdkd_ext/ui/tab.py).
NO_ESTIMATE = "Pick a teacher to see the memory estimate."


def distil_form(root, name: str, fields: dict[str, str]) -> None:
    """The tab's Distil section filled in: tiny student, 4 built-in prompts at 64 px, `fields` by label, `name`."""
    root.get_by_role("tab", name="Distil").or_(root.get_by_role("button", name="Distil", exact=True)).first.click()
    # The tab recomputes the estimates when the checkpoint or the student changes; wait for each to finish, as a
    # job started while an estimate runs races it (the planner patches torch's attention while it traces).
    estimate = root.locator("#sdkd_distil_estimate").first  # gradio 3 puts a Markdown's id on two nested nodes
    picked = settle(estimate, NO_ESTIMATE, timeout=30)
    root.locator('[data-testid="tiny-radio-label"]:visible').first.click()
    settle(estimate, picked)
    for label, value in {"Built-in prompts": "4", "Resolution": "64", **fields}.items():
        box = root.get_by_label(label, exact=True).locator("visible=true").first
        box.fill(value)
        box.press("Tab")
    root.locator("[placeholder*='-kd']:visible").first.fill(name)


# The status text and the src of each image element, read in one go (no waiting on elements that re-render).
PAGE_STATE = """(ids) => { const app = typeof gradioApp === "function" ? gradioApp() : document;
  const status = app.querySelector("#sdkd_status textarea"), out = {status: status ? status.value : ""};
  for (const id of ids) { const img = app.querySelector("#" + id + " img"); out[id] = img ? img.src : ""; }
  return out; }"""


def distil_watch(url: str, tab: str, checkpoint: str, shots: str, name: str) -> dict:
    """A Distil from the tab (tiny, 64 px, a sample grid every step) watched until the loss curve and the sample
    grid have each shown two images, stopped by the tab's Cancel, then its student loaded by "Load it now";
    screenshots `shots`-before/-during/-after.png."""
    with sync_playwright() as p:
        browser, page = launch(p)
        try:
            root = open_tab(page, url, tab, checkpoint)
            distil_form(root, name, {"Steps": "400", "Samples every N steps": "1"})
            shoot(page, f"{shots}-before.png")
            status = root.locator("#sdkd_status textarea")
            before = status.input_value()
            root.locator("#sdkd_distill").click()
            seen = {"sdkd_loss": [], "sdkd_samples": []}
            t, end = time.monotonic(), time.monotonic() + 600
            running = ""
            while time.monotonic() < end and not all(len(v) >= 2 for v in seen.values()):
                now = page.evaluate(PAGE_STATE, list(seen))
                for elem, srcs in seen.items():
                    if now[elem] and now[elem] not in srcs:
                        srcs.append(now[elem])
                running = now["status"]
                if re.match(FINAL, running):
                    break  # the job ended before both showed twice
                time.sleep(0.5)
            updates_s = round(time.monotonic() - t, 1)
            shoot(page, f"{shots}-during.png")
            root.locator("#sdkd_cancel").click()
            result = wait_status(page, status, before)
            load = root.locator("#sdkd_load")
            load_visible = load.is_visible()
            loaded = ""
            if load_visible:
                load.click()
                loaded = wait_status(page, status, result, timeout_ms=120_000)
            return {"loss_images": len(seen["sdkd_loss"]), "sample_images": len(seen["sdkd_samples"]),
                    "seconds_to_updates": updates_s, "status_while_running": running, "status": result,
                    "load_visible": load_visible, "load_status": loaded}
        finally:
            shoot(page, f"{shots}-after.png")
            browser.close()


def shoot(page, path: str) -> None:
    """A full-page screenshot; one that times out (the page busy, a font that never loads offline) is left out, so
    it never hides the check's own result."""
    try:
        page.screenshot(path=path, full_page=True, timeout=60_000)
    except Exception as e:  # Playwright's TimeoutError and a closed page alike: report, go on
        print(f"screenshot {path} not taken: {type(e).__name__}: {str(e).splitlines()[0]}", file=sys.stderr)


def prune_all(url: str, tab: str, checkpoint: str, shot: str, variants: list[str]) -> dict:
    """Press Prune once per variant; the status text after each."""
    out = {}
    with sync_playwright() as p:
        browser, page = launch(p)
        try:
            root = open_tab(page, url, tab, checkpoint)
            # Make it fast is the first section: open Prune's
            root.get_by_role("tab", name="Prune", exact=True).or_(root.get_by_role("button", name="Prune", exact=True)).first.click()
            status = root.locator("#sdkd_status textarea")
            for v in variants:
                root.locator(f'[data-testid="{v}-radio-label"]:visible').first.click()
                before = status.input_value()
                root.locator("#sdkd_prune").click()
                out[v] = wait_status(page, status, before)
        finally:
            shoot(page, shot)
            browser.close()
    return out


# Wraps the web UI's requestProgress (javascript/progressbar.js) to keep the task ids the page asks progress for:
# sdkd_submit (sdkd's javascript/sdkd.js) gives each tab job one and hands it to requestProgress.
RECORD_TASKS = """() => { window.sdkdTasks = []; const own = window.requestProgress;
  window.requestProgress = function (id, ...rest) { window.sdkdTasks.push(id); return own.call(this, id, ...rest); }; }"""


def task_progress(page, url: str, task: str) -> dict:
    """What the web UI's /internal/progress (the page's progress bar) says of task `task` now."""
    r = page.request.post(f"{url}/internal/progress", data={"id_task": task, "id_live_preview": -1, "live_preview": False})
    return {k: r.json().get(k) for k in ("active", "queued", "completed", "progress", "textinfo")}


def distil_cancel(url: str, tab: str, checkpoint: str, shot: str, name: str) -> dict:
    """Start a long Distil (tiny, built-in prompts, 64 px), follow the page's task in /internal/progress until it
    trains and its progress rises, press the web UI's Interrupt, report."""
    with sync_playwright() as p:
        browser, page = launch(p)
        try:
            root = open_tab(page, url, tab, checkpoint)
            status = root.locator("#sdkd_status textarea")
            distil_form(root, name, {"Steps": "100000"})
            page.evaluate(RECORD_TASKS)
            before = status.input_value()
            root.locator("#sdkd_distill").click()
            polls, seen, task, end = [], "", "", time.monotonic() + 600
            while time.monotonic() < end:  # until the trainer reports rising steps in the page's task
                task = (page.evaluate("window.sdkdTasks") or [""])[-1]
                seen = page.request.get(f"{url}/sdapi/v1/progress").json().get("textinfo") or ""
                if task:
                    polls.append(task_progress(page, url, task))
                training = [q["progress"] for q in polls if q["active"] and "distil" in (q["textinfo"] or "")]
                if len(training) >= 2 and training[-1] > training[0]:
                    break
                time.sleep(0.5)
            page.request.post(f"{url}/sdapi/v1/interrupt")
            t = time.monotonic()
            result = wait_status(page, status, before)
            stopped = round(time.monotonic() - t, 1)
            return {"progress_at_interrupt": seen, "status": result, "stopped_after_s": stopped, "task_id": task,
                    "task_progress": polls, "task_completed": bool(task) and task_progress(page, url, task)["completed"]}
        finally:
            shoot(page, shot)
            browser.close()


MODES = {"prune": lambda a: prune_all(*a[:4], a[4:]), "distil-cancel": lambda a: distil_cancel(*a),
         "distil-watch": lambda a: distil_watch(*a)}

if __name__ == "__main__":
    print(json.dumps(MODES[sys.argv[1]](sys.argv[2:])))
