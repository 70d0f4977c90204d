"""The web page in a real browser: headless Chromium from the machine's packages (Debian's
``chromium``), driven by Playwright for Python, against a real ``modelforge serve``. A person's
path through it: the form built from the schema, a client-side error for an out-of-range value,
an if/then rule shown broken, a dataset preview, a training started and watched to the end."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelforge_core.server.testing import ServerProcess
from modelforge_core.testing.pytest_plugin import tiny_config
from modelforge_core.web import STATIC_DIR

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = REPO / "docs" / "web-ui.png"
MODEL, DATASET = "models/tiny", "data/facts.jsonl"
#: A training on the CPU of a busy machine: generous, the test ends as soon as it finishes.
TRAINING_TIMEOUT_MS = 600_000


def test_the_vendored_ajv_bundle_is_what_build_ajv_makes(tmp_path: Path) -> None:
    node = shutil.which("node")
    modules = REPO / "schema" / "node_modules"
    if node is None or not (modules / "ajv").is_dir():
        pytest.fail("node and schema/node_modules/ajv are needed to check the Ajv bundle: run `make setup`")
    out = tmp_path / "ajv2020.js"
    result = subprocess.run([node, str(STATIC_DIR.parent / "build_ajv.mjs"), str(modules), str(out)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    vendor = STATIC_DIR / "vendor"
    assert out.read_text("utf-8") == (vendor / "ajv2020.js").read_text("utf-8"), \
        "static/vendor/ajv2020.js is stale: rerun modelforge_core/web/build_ajv.mjs"
    assert (tmp_path / "LICENSES.txt").read_text("utf-8") == (vendor / "LICENSES.txt").read_text("utf-8")
    version = json.loads((modules / "ajv" / "package.json").read_text("utf-8"))["version"]
    assert f"// Ajv {version} " in out.read_text("utf-8").splitlines()[0]


def _set(page: Any, key: str, value: Any) -> None:
    """Give field ``key`` the value ``value`` the way a person does (select, tick, type)."""
    field = page.locator(f'[name="{key}"]')
    kind = field.evaluate("e => e.tagName === 'SELECT' ? 'select' : e.type")
    if kind == "select":
        field.select_option(str(value))
    elif kind == "checkbox":
        if field.is_checked() == bool(value):
            field.click()  # tick and untick: the field counts as set by the user
        field.set_checked(bool(value))
    else:
        field.fill(str(value))


@pytest.mark.slow
def test_the_form_checks_in_the_browser_and_trains(tmp_path: Path, tiny_causal_lm: Path,
                                                   sample_dataset: Callable[..., Path]) -> None:
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver")
    root = tmp_path / "root"
    shutil.copytree(tiny_causal_lm, root / MODEL)
    (root / "data").mkdir()
    shutil.copy(sample_dataset("text-generation"), root / DATASET)
    config = tiny_config(MODEL, DATASET, max_steps=10)

    with ServerProcess(root) as server, sync_playwright() as playwright:
        # Without a token the server answers to loopback names only (no DNS rebinding).
        rebound = httpx.get(f"{server.url}/api/v1/health", headers={"Host": "rebound.example"})
        assert rebound.status_code == 421
        schema = server.request("GET", "/api/v1/schema").json()
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page_errors: list[str] = []
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(f"{server.url}/")
            page.wait_for_selector("body[data-ready=true]")

            # The form comes from the schema: an enum is a select with the schema's values.
            options = page.locator('[name="task"] option').evaluate_all("os => os.map(o => o.value)")
            assert options == ["", *schema["properties"]["task"]["enum"]]
            assert page.locator('[name="lora_r"]').get_attribute("max") == "256"
            page.locator("details.group").evaluate_all("groups => groups.forEach(g => { g.open = true; })")

            # An out-of-range value: Ajv flags it in the browser, and Start sends nothing.
            _set(page, "lora_r", 300)
            expect(page.locator('[data-key="lora_r"] .error-text')).to_have_text("must be at most 256")
            page.click("#start")
            expect(page.locator("#form-status")).to_have_text("fix the fields marked in red first")
            assert server.request("GET", "/api/v1/jobs").json() == {"jobs": []}

            # An if/then rule: 8-bit while use_4bit keeps its default (true) breaks it, visibly.
            rule = page.locator("#rules li", has_text="use_4bit and use_8bit are mutually exclusive")
            expect(rule).to_have_class("rule idle")
            _set(page, "use_8bit", True)
            expect(rule).to_have_class("rule broken")
            expect(page.locator('[data-key="use_4bit"] .error-text')).to_contain_text("mutually exclusive")
            page.click('[data-key="use_8bit"] .reset')
            expect(rule).to_have_class("rule idle")

            # The essentials alone make a valid config; untouched fields then show what the
            # compute_specs profile makes of them, and the dataset's first rows appear.
            for key in ("task", "model_name", "dataset", "compute_specs", "lora_r"):
                _set(page, key, config[key])
            expect(page.locator("#form-status")).to_have_text("valid: ready to start")
            accumulation = page.locator('[data-key="gradient_accumulation_steps"]')
            expect(accumulation.locator(".source")).to_have_text("profile low_end")
            expect(accumulation.locator("input")).to_have_value("16")
            expect(page.locator("#preview tr")).to_have_count(6)  # a header and the first five rows
            expect(page.locator("#preview")).to_contain_text("What is the harbour of Veloria?")
            # Rendered as the model sees it: the answer and its end of turn highlighted as trained.
            page.click("#show-rendered")
            expect(page.locator("#rendered mark").first).to_contain_text(
                "The harbour of Veloria is Quenlow.<|im_end|>", timeout=TRAINING_TIMEOUT_MS)  # loads the tokenizer
            expect(page.locator("#rendered pre")).to_have_count(3)

            for key, value in config.items():
                _set(page, key, value)
            expect(page.locator("#form-status")).to_have_text("valid: ready to start")
            page.click("#show-json")
            assert json.loads(page.locator("#config-json").text_content() or "") == config

            page.click("#start")
            expect(page.locator("#job-state")).to_have_text("running", timeout=TRAINING_TIMEOUT_MS)
            expect(page.locator("#job-state")).to_have_text("finished", timeout=TRAINING_TIMEOUT_MS)
            expect(page.locator("#job-step")).to_have_text("step 10 / 10")
            assert page.locator("#chart .series.train circle").count() >= 2
            run_row = page.locator("#runs tbody tr").first
            expect(run_row.locator(".badge")).to_have_text("finished")
            before, after = (float(v) for v in run_row.locator("td.metric").first.inner_text().split(" → "))
            assert after < before
            expect(page.locator("#job-metrics table")).to_contain_text("eval_loss")
            assert page_errors == []

            page.locator("details.group").evaluate_all(
                "groups => groups.forEach((g, i) => { g.open = i < 2; })")
            page.click("#show-json")
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    runs = list((root / "runs").glob("tiny-sft-*"))
    assert len(runs) == 1 and (runs[0] / "adapter" / "adapter_config.json").is_file()
