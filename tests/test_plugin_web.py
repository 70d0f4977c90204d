"""Third-party schema fragments in the web page: one Ajv (strict mode) cannot compile is named
on the page instead of a blank form; an array option of any plugin is edited as a list, with a
generic error text. Also ``modelforge plugins --check``, which compiles the fragments the same way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelforge_core.server.testing import ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

LISTY = '''
from modelforge_core import hookimpl
from modelforge_core.api import Strategy

class Listy(Strategy):
    name = "listy-3p"
    description = "A third-party strategy with a list option (test)."
    options_schema = {"properties": {"steps": {
        "type": "array", "items": {"type": "integer", "minimum": 1}, "default": [1, 2],
        "description": "Steps at which something happens.", "examples": [[1, 2]]}}}

@hookimpl
def register_strategies(register):
    register(Listy())
'''
BROKEN = '''
from modelforge_core import hookimpl
from modelforge_core.api import Strategy

class Broken(Strategy):
    name = "broken-3p"
    description = "A third-party strategy whose fragment Ajv's strict mode refuses (test)."
    options_schema = {"properties": {"nested": {
        "properties": {"a": {"type": "string"}}, "required": ["a"], "default": {"a": "x"},
        "description": "An object option without its type."}}}

@hookimpl
def register_strategies(register):
    register(Broken())
'''


def install_fake(root: Path) -> dict[str, str]:
    """An installed-looking distribution under ``root``; the environment that finds it."""
    info = root / "mf_web_3p-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mf-web-3p\nVersion: 1.0\n", "utf-8")
    (info / "entry_points.txt").write_text("[modelforge]\nweb-listy = mf_web_listy\nweb-broken = mf_web_broken\n",
                                           "utf-8")
    (root / "mf_web_listy.py").write_text(LISTY, "utf-8")
    (root / "mf_web_broken.py").write_text(BROKEN, "utf-8")
    return {"PYTHONPATH": str(root)}


def test_plugins_check_names_the_fragment_ajv_cannot_compile(tmp_path: Path) -> None:
    env = {**__import__("os").environ, **install_fake(tmp_path / "site")}
    result = subprocess.run([sys.executable, "-m", "modelforge_core", "plugins", "--check", "--json"],
                            env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 1, result.stderr
    problems = json.loads(result.stdout)["schema_problems"]
    assert set(problems) == {"strategy broken-3p", "effective schema"}
    assert 'missing type "object" for keyword "required"' in problems["strategy broken-3p"]
    assert "error: Ajv (strict mode) cannot compile the effective schema" in result.stderr
    assert "Traceback" not in result.stderr
    fine = subprocess.run([sys.executable, "-m", "modelforge_core", "plugins", "--check"],
                          env={**env, "MODELFORGE_DISABLE_PLUGINS": "web-broken"}, capture_output=True, text=True,
                          check=False)
    assert fine.returncode == 0, fine.stderr
    assert "every one compiles with Ajv (strict mode)" in fine.stdout


def _set(page: Any, key: str, value: str) -> None:
    field = page.locator(f'[name="{key}"]')
    if field.evaluate("e => e.tagName") == "SELECT":
        field.select_option(value)
    else:
        field.fill(value)


@pytest.mark.slow
def test_the_page_names_a_broken_fragment_and_edits_any_list_option(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver")
    env = install_fake(tmp_path / "site")
    root = tmp_path / "root"
    root.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            with ServerProcess(root, env=env) as server:
                report = server.request("GET", "/api/v1/plugins").json()
                assert set(report["schema_problems"]) == {"strategy broken-3p", "effective schema"}
                page = browser.new_page()
                page.goto(f"{server.url}/")
                page.wait_for_selector("body[data-ready=true]")
                expect(page.locator("#schema-error")).to_contain_text(
                    'the strategy broken-3p: strict mode: missing type "object" for keyword "required"')
                expect(page.locator("#form-status")).to_have_text("the schema of an installed plugin cannot be "
                                                                  "compiled")
            # Without the broken plugin the form comes back; a plugin's array option is a list field.
            with ServerProcess(root, env={**env, "MODELFORGE_DISABLE_PLUGINS": "web-broken"}) as server:
                assert server.request("GET", "/api/v1/plugins").json()["schema_problems"] == {}
                page = browser.new_page()
                page.goto(f"{server.url}/")
                page.wait_for_selector("body[data-ready=true]")
                page.locator("details.group").evaluate_all("groups => groups.forEach(g => { g.open = true; })")
                _set(page, "strategy", "listy-3p")
                steps = page.locator('[name="listy-3p.steps"]')
                expect(steps).to_have_value("1, 2")
                _set(page, "listy-3p.steps", "3, x")
                expect(page.locator('[data-key="listy-3p.steps"] .error-text')).to_have_text(
                    "must be a comma-separated list of whole numbers")
                _set(page, "listy-3p.steps", "3, 5")
                expect(page.locator('[data-key="listy-3p.steps"] .error-text')).to_have_text("")
                config = json.loads(page.locator("#config-json").text_content() or "{}")
                assert config["listy-3p"] == {"steps": [3, 5]}
                # The built-in oneOf list keeps its word and its list, with the same generic text.
                _set(page, "lora_target_modules", "q_proj, ")
                assert json.loads(page.locator("#config-json").text_content() or "{}")[
                    "lora_target_modules"] == ["q_proj"]
                _set(page, "lora_target_modules", "all-linear")
                assert json.loads(page.locator("#config-json").text_content() or "{}")[
                    "lora_target_modules"] == "all-linear"
        finally:
            browser.close()
