"""Issue 22 without training: the HTTP API never answers 500 for any input of
docs/reliability.md's table, one job per ``output_dir`` under concurrent submissions, ids that
are no names, damaged run folders in the lists (CLI and API), the server token's strength.

The app runs in-process (no worker: nothing trains here)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient
from test_reliability import CASES, GOOD_ROW

from modelforge_core.cli import main
from modelforge_core.errors import UsageError
from modelforge_core.plugins import Plugins
from modelforge_core.server.app import create_app
from modelforge_core.server.settings import ServerSettings, token_weakness

GOOD_CONFIG = {"task": "text-generation", "model_name": "./model", "dataset": "data.jsonl", "compute_specs": "low_end"}


def client(root: Path, plugins: Plugins) -> TestClient:
    app = create_app(ServerSettings.build(data_root=root), plugins=plugins, start_worker=False)
    return TestClient(app, base_url="http://localhost", raise_server_exceptions=False)


@pytest.fixture
def api_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "model").mkdir(parents=True)
    (root / "model" / "config.json").write_text("{}")
    (root / "data.jsonl").write_text(GOOD_ROW * 4)
    return root


# --- the table, through the API ------------------------------------------------------------------

API_CASES = sorted(case_id for case_id, case in CASES.items() if case.args[0] in ("validate", "train"))


@pytest.mark.parametrize("case_id", API_CASES)
def test_no_input_of_the_table_gets_a_500_from_the_api(case_id: str, tmp_path: Path, builtin_plugins: Plugins) -> None:
    """Every CLI case of docs/reliability.md sent to the API: the config file's bytes as the body
    of validate and submit, its dataset to the preview. Only 4xx answers, never a 500."""
    case = CASES[case_id]
    root = tmp_path / "root"
    root.mkdir()
    for name, content in case.files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    if case.setup is not None:
        case.setup(root)
    api = client(root, builtin_plugins)
    config_file = next((root / n for n in ("c.json", "c.yaml") if (root / n).is_file()), None)
    body = config_file.read_bytes()[: 2 << 20] if config_file else json.dumps(GOOD_CONFIG).encode()
    answers = []
    for path in ("/api/v1/validate?data=true", "/api/v1/jobs"):
        response = api.post(path, content=body, headers={"Content-Type": "application/json"})
        answers.append(response.status_code)
        assert response.status_code != 500, (path, response.text[:500])
        assert len(response.text) < 20_000, f"{path}: {len(response.text)} characters"
    for dataset in ("data.jsonl", "pipe.jsonl", "zero.jsonl"):
        preview = api.get("/api/v1/datasets/preview", params={"path": dataset})
        assert preview.status_code != 500, (dataset, preview.text[:500])
    assert all(code in (200, 202, 400, 409, 413) for code in answers), answers


def test_parser_edge_cases_in_request_bodies_get_400_with_the_location(api_root: Path,
                                                                       builtin_plugins: Plugins) -> None:
    api = client(api_root, builtin_plugins)
    bodies = {
        '{"lora_r": ' + "9" * 5000 + "}": "a number of 5,000 characters",
        "[" * 100_000 + "]" * 100_000: "nested too deeply",
        '{"run_name": "\\ud800"}': "lone surrogate",
        json.dumps({**GOOD_CONFIG, "dataset": "a\u0000b"}): "NUL byte",
        json.dumps({**GOOD_CONFIG, "seed": 2**32}): "above the maximum of 4294967295",
    }
    for body, expected in bodies.items():
        response = api.post("/api/v1/validate", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (expected, response.text[:300])
        error = response.json()["errors"][0]
        assert expected in error["message"], error
        assert error.get("line") or error.get("path") not in (None, "(root)"), error


def test_preview_of_hostile_datasets_never_500(api_root: Path, builtin_plugins: Plugins) -> None:
    (api_root / "digits.jsonl").write_text('{"n": ' + "9" * 5000 + "}\n" + GOOD_ROW)
    (api_root / "deep.jsonl").write_text('{"n": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    (api_root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    os.mkfifo(api_root / "pipe.jsonl")
    (api_root / "zero.jsonl").symlink_to("/dev/zero")
    api = client(api_root, builtin_plugins)
    (api_root / "surrogate.jsonl").write_text('{"input": "\\ud800", "output": "x"}\n')
    for name in ("deep.json", "pipe.jsonl", "zero.jsonl", "a\u0000b.jsonl", "x" * 5000 + ".jsonl",
                 "/".join(["y" * 250] * 30) + ".jsonl"):
        response = api.get("/api/v1/datasets/preview", params={"path": name})
        assert 400 <= response.status_code < 500, (name[:40], response.status_code, response.text[:300])
    for name, line, message in (("digits.jsonl", 1, "too many digits"), ("deep.jsonl", 1, "nested too deeply"),
                                ("surrogate.jsonl", 1, "lone surrogate")):
        preview = api.get("/api/v1/datasets/preview", params={"path": name})
        assert preview.status_code == 200, preview.text[:300]
        assert preview.json()["problems"][0]["line"] == line and message in preview.json()["problems"][0]["message"]
    digits = api.get("/api/v1/datasets/preview", params={"path": "digits.jsonl"}).json()
    assert digits["rows"] == [json.loads(GOOD_ROW)]


# --- jobs --------------------------------------------------------------------------------------------

def test_concurrent_submissions_for_one_output_dir_get_one_202(api_root: Path, builtin_plugins: Plugins) -> None:
    api = client(api_root, builtin_plugins)
    body = json.dumps({**GOOD_CONFIG, "output_dir": "runs/shared"})
    codes: list[int] = []
    start = threading.Barrier(20)

    def submit() -> None:
        start.wait()
        response = api.post("/api/v1/jobs", content=body, headers={"Content-Type": "application/json"})
        codes.append(response.status_code)

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [202] + [409] * 19, codes
    # Another spelling of the same folder is the same folder.
    again = api.post("/api/v1/jobs", content=json.dumps({**GOOD_CONFIG, "output_dir": "runs/./x/../shared"}),
                     headers={"Content-Type": "application/json"})
    assert again.status_code == 409


def test_output_dir_that_cannot_hold_a_run_gets_400(api_root: Path, builtin_plugins: Plugins) -> None:
    (api_root / "a-file").write_text("x")
    api = client(api_root, builtin_plugins)
    for output_dir, expected in (("a-file", "is a file, not a folder"), ("a-file/run", "is a file, not a folder")):
        response = api.post("/api/v1/jobs", content=json.dumps({**GOOD_CONFIG, "output_dir": output_dir}),
                            headers={"Content-Type": "application/json"})
        assert response.status_code == 400, response.text
        assert expected in response.json()["error"]["message"]
        assert str(api_root) not in response.text  # paths shown relative to the data root


def test_ids_that_are_no_names_get_404_or_400(api_root: Path, builtin_plugins: Plugins) -> None:
    api = client(api_root, builtin_plugins)
    for job_id in ("j" * 5000, "a%00b", "..", "%2E%2E", "x" * 255, "-"):
        for method, path in (("GET", f"/api/v1/jobs/{job_id}"), ("POST", f"/api/v1/jobs/{job_id}/cancel"),
                             ("POST", f"/api/v1/jobs/{job_id}/resume"), ("GET", f"/api/v1/jobs/{job_id}/events")):
            response = api.request(method, path)
            assert response.status_code in (400, 404), (job_id[:20], path[:40], response.status_code)
            assert len(response.text) < 1000
    for run_id in ("r" * 5000, "a%00b", "/".join(["z" * 250] * 30)):
        response = api.get(f"/api/v1/runs/{run_id}")
        assert response.status_code in (400, 403, 404), (run_id[:20], response.status_code)


# --- damaged run folders in the lists ----------------------------------------------------------------

def _run(folder: Path, **files: Any) -> Path:
    folder.mkdir(parents=True)
    defaults = {"config.json": {"config": {**GOOD_CONFIG, "strategy": "sft", "provider": "huggingface"},
                                "sources": {}},
                "status.json": {"status": "finished", "global_step": 3, "started_at": "2026-11-30T10:00:00+00:00"},
                "metrics.json": {"before": {"eval_loss": 3.0}, "after": {"eval_loss": 2.0}}}
    for name, content in {**defaults, **files}.items():
        if content is None:
            continue
        if callable(content):
            content(folder / name)
        else:
            (folder / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return folder


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    runs = root / "runs"
    _run(runs / "good")
    _run(runs / "empty-config", **{"config.json": ""})
    _run(runs / "truncated-config", **{"config.json": '{"config": {"task": "text-gen'})
    _run(runs / "list-config", **{"config.json": "[1, 2]"})
    _run(runs / "model-folder", **{"config.json": {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}})
    _run(runs / "fifo-config", **{"config.json": os.mkfifo})
    _run(runs / "fifo-status", **{"status.json": os.mkfifo})
    _run(runs / "zero-metrics", **{"metrics.json": lambda p: p.symlink_to("/dev/zero")})
    _run(runs / "odd-values", **{"metrics.json": {"before": [1], "after": {"eval_loss": "low"}},
                                 "status.json": {"status": "finished", "global_step": "x", "error": 5},
                                 "manifest.json": {"components": 5, "data": []}})
    _run(runs / "binary-status", **{"status.json": "\x00\xff garbage"})
    (runs / "config-folder").mkdir()
    (runs / "config-folder" / "config.json").mkdir()
    return root


def test_damaged_runs_are_listed_as_damaged_and_the_rest_shown(runs_root: Path, builtin_plugins: Plugins,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(runs_root)
    result = CliRunner().invoke(main, ["runs", "--json"], obj={})
    assert result.exit_code == 0, result.output
    found = {run["name"]: run for run in json.loads(result.output)["runs"]}
    assert found["good"]["status"] == "finished" and found["good"]["metrics"]["after"] == {"eval_loss": 2.0}
    for name in ("empty-config", "truncated-config", "list-config", "model-folder", "fifo-config", "config-folder"):
        assert found[name]["status"] == "damaged", (name, found[name])
        assert "damaged" in found[name]["note"]
    assert found["fifo-status"]["status"] == "unknown" and found["fifo-status"]["task"] == "text-generation"
    assert found["zero-metrics"]["status"] == "finished" and found["zero-metrics"]["metrics"]["after"] == {}
    assert found["odd-values"]["global_step"] is None and found["odd-values"]["metrics"]["after"] == {}
    table = CliRunner().invoke(main, ["runs"], obj={})
    assert table.exit_code == 0 and "Traceback" not in table.output
    assert "good" in table.output and "damaged" in table.output
    api = client(runs_root, builtin_plugins)
    listed = api.get("/api/v1/runs")
    assert listed.status_code == 200, listed.text[:500]
    by_id = {run["id"]: run for run in listed.json()["runs"]}
    assert by_id["runs/good"]["status"] == "finished" and by_id["runs/model-folder"]["status"] == "damaged"
    for run_id in by_id:
        assert api.get(f"/api/v1/runs/{run_id}").status_code in (200, 404), run_id


# --- the server's token ------------------------------------------------------------------------------

@pytest.mark.parametrize("token", ["a", " ", " " * 40, "a" * 64, "ab" * 20, "correcthorsebatterystaple",
                                   "0123456789", "tok en-with-space-inside-it-xxxxxxxxxx", "\x07" * 30])
def test_weak_tokens_are_refused_beyond_loopback(token: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as refused:
        ServerSettings.build(host="0.0.0.0", token=token, data_root=tmp_path)  # noqa: S104 (refused)
    assert "secrets.token_urlsafe(32)" in str(refused.value)
    assert token_weakness(token)
    ServerSettings.build(host="127.0.0.1", token=token, data_root=tmp_path)  # loopback: the user's choice


def test_real_secrets_are_accepted(tmp_path: Path) -> None:
    import secrets
    import uuid

    for token in (secrets.token_urlsafe(32), secrets.token_hex(32), str(uuid.uuid4())):
        assert token_weakness(token) is None, token
        ServerSettings.build(host="0.0.0.0", token=token, data_root=tmp_path)  # noqa: S104 (a real secret)


def test_serve_refuses_a_weak_token_in_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFORGE_API_TOKEN", "x")
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--data-root", str(tmp_path)], obj={})  # noqa: S104
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "needs a real secret" in result.output and "token_urlsafe" in result.output


# --- the manifest's fingerprint ------------------------------------------------------------------------

def test_the_fingerprint_is_of_the_bytes_that_were_read(tmp_path: Path, builtin_plugins: Plugins) -> None:
    """A file replaced right after it was read (a run starting while the file is rewritten): the
    fingerprint and the rows both describe the bytes that were read, never a second read."""
    import hashlib

    from modelforge_core.data import check_dataset

    config = {"task": "text-generation", "strategy": "sft"}
    for name, first, second in (("data.jsonl", GOOD_ROW * 3, GOOD_ROW * 7),
                                ("data.json", json.dumps([json.loads(GOOD_ROW)] * 2), "[]")):
        path = tmp_path / name
        path.write_text(first)
        data = check_dataset({**config, "dataset": str(path)}, plugins=builtin_plugins)
        path.write_text(second)
        assert data.fingerprint == "sha256:" + hashlib.sha256(first.encode()).hexdigest()
        assert len(data.rows) == (3 if name == "data.jsonl" else 2)
        again = check_dataset({**config, "dataset": str(path)}, plugins=builtin_plugins) if second != "[]" else None
        assert again is None or again.fingerprint == "sha256:" + hashlib.sha256(second.encode()).hexdigest()


# --- the run folder's lock (the two-process test is in test_reliability_runs.py) ---------------------

def test_the_run_lock_refuses_a_second_writer_and_leaves_no_file(tmp_path: Path) -> None:
    from modelforge_core.errors import RunError
    from modelforge_core.runlock import LOCK_FILE, claim_new_run, lock_run

    first = lock_run(tmp_path)
    with pytest.raises(RunError, match=rf"being written by another training \(process {os.getpid()}\)"):
        lock_run(tmp_path)
    assert (tmp_path / LOCK_FILE).read_text() == str(os.getpid())
    first.release()
    assert not (tmp_path / LOCK_FILE).exists(), "a writer that ends removes its lock file"
    (tmp_path / LOCK_FILE).write_text("999999")  # left by a killed process: it locks nothing
    lock_run(tmp_path).release()
    (tmp_path / "config.json").write_text("{}")  # another training wrote here between check and lock
    with pytest.raises(RunError, match="not empty"):
        claim_new_run(tmp_path, given=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(RunError, match="cannot write into the run folder"):
        lock_run(tmp_path / "a-file")
