"""Drive the standalone app's tab (`sdkd ui`) in a real headless Chromium (Debian's, through Playwright; no download).

Run in the browser venv (tests/hosts/a1111.py's `browser_venv`), one JSON line out:
  python tab_browser.py URL SHOTS_DIR   what the page showed at each step of: pick the teacher, Make it fast's plan,
                                        the Few-step LoRA estimate, Distil with samples every step, Cancel, Load it
                                        now, Rebase, Bench
Element ids are those of /work/notes/IDS.md (sdkd_info, sdkd_distil_estimate, sdkd_loss, ...).
"""

import json
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
DONE = "el => el.value && !/^(planning|starting|distill |lora |encode-|cache-|teacher-samples|preview |export )/.test(el.value) && el.value !== 'cancelling at the next step...'"


def field(page, label: str):
    """The visible input of the block labelled `label` (textbox, number or dropdown)."""
    return page.get_by_label(label, exact=True).locator("visible=true").first


def pick(page, label: str, option: str) -> None:
    """Choose `option` in the dropdown labelled `label`."""
    box = field(page, label)
    box.click()
    box.fill(option)
    page.get_by_role("option", name=option, exact=True).locator("visible=true").first.click()


def fill(page, values: dict) -> None:
    """Type each value into the field of that label and leave it (gradio commits a number on blur)."""
    for label, value in values.items():
        box = field(page, label)
        box.fill(str(value))
        box.press("Tab")


def open_section(page, name: str) -> None:
    """A tab of the sdkd Blocks (a button in gradio 3, a tab in gradio 4+)."""
    page.get_by_role("tab", name=name, exact=True).or_(page.get_by_role("button", name=name, exact=True)).first.click()


def image_src(page, elem_id: str) -> str:
    """The src of the image shown in element `elem_id`, or ''."""
    img = page.locator(f"#{elem_id} img")
    return img.first.get_attribute("src") or "" if img.count() else ""


def status_after(page, status) -> str:
    """The status text once the job has ended."""
    page.wait_for_function(DONE, arg=status.element_handle(), timeout=300_000)
    return status.input_value()


def drive(url: str, shots: Path) -> dict:
    """The whole run; what was seen, for the test to check."""
    seen: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        try:
            page.goto(url, timeout=120_000)
            status = page.locator("#sdkd_status textarea")
            pick(page, "Checkpoint (teacher or student)", "teacher.safetensors")
            page.wait_for_function("() => document.querySelector('#sdkd_info table') !== null", timeout=60_000)
            seen["info"] = page.locator("#sdkd_info").inner_text()
            page.screenshot(path=str(shots / "standalone-tab-before.png"), full_page=True)

            open_section(page, "Make it fast")  # the route, estimates and expected time on the click
            page.locator("#sdkd_fast_show").click()
            page.wait_for_function("() => /Route:/.test(document.querySelector('#sdkd_fast_plan').innerText)",
                                   timeout=120_000)
            seen["fast_plan"] = page.locator("#sdkd_fast_plan").inner_text()
            open_section(page, "Few-step LoRA")  # its estimate follows the checkpoint picked above
            page.wait_for_function("() => /Settings it will use/.test(document.querySelector('#sdkd_fewstep_estimate')"
                                   ".innerText)", timeout=60_000)
            seen["fewstep_estimate"] = page.locator("#sdkd_fewstep_estimate").inner_text()

            open_section(page, "Distil")
            page.locator('[data-testid="tiny-radio-label"]:visible').first.click()
            fill(page, {"Built-in prompts": 2, "Steps": 100000, "Resolution": 64, "Samples every N steps": 1})
            page.locator("[placeholder*='-kd']:visible").first.fill("browser-kd")
            page.locator("#sdkd_distill").click()
            page.wait_for_function("() => /Settings it will use/.test(document.querySelector('#sdkd_distil_estimate').innerText)",
                                   timeout=120_000)
            seen["estimate"] = page.locator("#sdkd_distil_estimate").inner_text()
            statuses, grids, curves = [], [], []
            end = time.monotonic() + 300
            while time.monotonic() < end and not (len(set(grids)) >= 2 and curves):
                statuses.append(status.input_value())
                grids += [s for s in [image_src(page, "sdkd_samples")] if s and s not in grids]
                curves += [s for s in [image_src(page, "sdkd_loss")] if s and s not in curves]
                time.sleep(0.5)
            seen.update(statuses=sorted(set(statuses)), grids=len(grids), curves=len(curves))
            page.screenshot(path=str(shots / "standalone-tab-during.png"), full_page=True)
            page.locator("#sdkd_cancel").click()
            seen["distil"] = status_after(page, status)
            page.locator("#sdkd_load").wait_for(state="visible", timeout=30_000)
            page.locator("#sdkd_load").click()
            page.wait_for_function("el => /^(Loaded|Error)/.test(el.value)", arg=status.element_handle(), timeout=120_000)
            seen["load"] = status.input_value()
            page.screenshot(path=str(shots / "standalone-tab-after.png"), full_page=True)

            open_section(page, "Rebase")
            seen["rebase_note"] = "bk-sdm" in page.locator("body").inner_text()
            pick(page, "Base (what the checkpoint was made from)", "teacher.safetensors")
            pick(page, "Student to rebase", "browser-kd.safetensors")
            before = status.input_value()
            page.locator("#sdkd_rebase").click()
            page.wait_for_function("([el, old]) => el.value && el.value !== old", arg=[status.element_handle(), before],
                                   timeout=120_000)
            seen["rebase"] = status_after(page, status)

            open_section(page, "Bench")
            pick(page, "Students", "browser-kd.safetensors")
            fill(page, {"Size": 64, "Timed UNet calls": 1, "Timed images": 1})
            field(page, "Steps").fill("1")  # Bench's own Steps: the only visible one now
            before = status.input_value()
            page.locator("#sdkd_bench").click()
            page.wait_for_function("([el, old]) => el.value && el.value !== old", arg=[status.element_handle(), before],
                                   timeout=300_000)
            seen["bench"] = status_after(page, status)
            seen["bench_result"] = page.locator("#sdkd_bench_result").inner_text()
            seen["bench_chart"] = bool(image_src(page, "sdkd_bench_result"))
        finally:
            page.screenshot(path=str(shots / "standalone-tab-last.png"), full_page=True)
            browser.close()
    return seen


if __name__ == "__main__":
    print(json.dumps(drive(sys.argv[1], Path(sys.argv[2]))))
