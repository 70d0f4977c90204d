"""``modelforge serve`` through real HTTP: a server in a child process on a free loopback port,
driven the way a frontend drives it. The light tests share one server that never trains; one
scenario trains for real: two queued jobs, a server restart between them, a finished run, and a
cancel that leaves a checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelforge_core.runs import RunDir
from modelforge_core.server.testing import ServerProcess
from modelforge_core.testing.datasets import sample_rows, write_jsonl
from modelforge_core.testing.pytest_plugin import tiny_config

Run = Callable[..., subprocess.CompletedProcess[str]]

TOKEN = "test-token-5bd1c0e7"  # noqa: S105 (a throwaway token for a test server)
ALLOWED_ORIGIN = "http://allowed.test"
MODEL, DATASET = "models/tiny", "data/facts.jsonl"
SECRET = "do-not-leak-7f3a"  # noqa: S105 (a marker that must never come back)

# Three mistakes, on known lines: an out-of-range value, a broken if/then rule, an unknown key.
INVALID = """{
  "task": "text-generation",
  "model_name": "models/tiny",
  "dataset": "data/facts.jsonl",
  "compute_specs": "low_end",
  "lora_r": 300,
  "fp16": true,
  "bf16": true,
  "optimizer": "sgd"
}
"""


@pytest.fixture(scope="module")
def light_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with a dataset, a file that is not a dataset, and a secret outside it."""
    base = tmp_path_factory.mktemp("serve-light")
    root = base / "root"
    write_jsonl(root / DATASET, sample_rows("text-generation"))
    (root / "notes.txt").write_text(f"{SECRET}\n", "utf-8")
    (base / "outside.jsonl").write_text(json.dumps({"input": SECRET, "output": SECRET}) + "\n", "utf-8")
    (root / "data" / "escape.jsonl").symlink_to(base / "outside.jsonl")
    return root


@pytest.fixture(scope="module")
def light(light_root: Path) -> Iterator[ServerProcess]:
    """A server with a token and one allowed CORS origin; no test here trains on it."""
    with ServerProcess(light_root, "--cors-origin", ALLOWED_ORIGIN, token=TOKEN) as server:
        yield server


def _without_file(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in error.items() if k != "file"} for error in report["errors"]]


# --- start-up refusals ---------------------------------------------------------------------------

def test_serve_refuses_a_public_address_without_a_token(modelforge: Run, tmp_path: Path) -> None:
    result = modelforge("serve", "--host", "0.0.0.0", "--data-root", tmp_path)  # noqa: S104 (refused)
    assert result.returncode == 2
    assert "binding to 0.0.0.0" in result.stderr and "--token" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_server_on_the_same_job_folder_is_refused(modelforge: Run, light: ServerProcess,
                                                           light_root: Path) -> None:
    result = modelforge("serve", "--port", "0", "--data-root", light_root)
    assert result.returncode == 2
    assert "another modelforge serve uses the job folder" in result.stderr


# --- guards --------------------------------------------------------------------------------------

def test_every_api_route_needs_the_bearer_token(light: ServerProcess) -> None:
    for path in ("/api/v1/health", "/api/v1/schema", "/api/v1/jobs", "/api/v1/runs", "/api/v1/openapi.json"):
        missing = light.request("GET", path, token=False)
        assert missing.status_code == 401, path
        assert missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["code"] == "unauthorized"
        wrong = light.request("GET", path, token=False, headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401, path
        assert light.request("GET", path).status_code == 200, path
    submitted = light.request("POST", "/api/v1/jobs", token=False, json_body={"task": "text-generation"})
    assert submitted.status_code == 401
    # The page itself holds no data; it asks for the token when the API answers 401.
    page = light.request("GET", "/", token=False)
    assert page.status_code == 200 and "<title>ModelForge</title>" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_an_oversized_body_is_refused_with_413(light: ServerProcess) -> None:
    big = {"task": "text-generation", "padding": "x" * (1 << 20)}
    declared = light.request("POST", "/api/v1/validate", json_body=big)
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts while it reads
        yield b'{"task": "text-generation", "padding": "'
        for _ in range(20):
            yield b"x" * (64 << 10)
        yield b'"}'

    streamed = light.request("POST", "/api/v1/validate", content=chunks(),
                             headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413


def test_cors_allows_only_the_given_origin(light: ServerProcess) -> None:
    allowed = light.request("GET", "/api/v1/health", headers={"Origin": ALLOWED_ORIGIN})
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    other = light.request("GET", "/api/v1/health", headers={"Origin": "http://elsewhere.test"})
    assert "access-control-allow-origin" not in other.headers
    preflight = light.request("OPTIONS", "/api/v1/jobs", token=False, headers={
        "Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    # A page on another site cannot start a training, even with a simple (no-preflight) request.
    forged = light.request("POST", "/api/v1/jobs", json_body={}, headers={"Origin": "http://elsewhere.test"})
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "cross_origin"


def test_a_config_must_be_sent_as_json(light: ServerProcess) -> None:
    response = light.request("POST", "/api/v1/validate", content="task=text-generation",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    malformed = light.request("POST", "/api/v1/validate", content='{"task": "text-generation",\n  "lora_r": }',
                              headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400
    [error] = malformed.json()["errors"]
    assert (error["code"], error["line"], error["path"]) == ("parse", 2, "(root)")


# --- validation, schema, plugins: the same answers as the CLI -------------------------------------

def test_validate_reports_what_modelforge_validate_json_reports(light: ServerProcess, light_root: Path,
                                                                 modelforge: Run) -> None:
    response = light.request("POST", "/api/v1/validate", content=INVALID,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    api = response.json()
    (light_root / "invalid.json").write_text(INVALID, "utf-8")
    cli = modelforge("validate", light_root / "invalid.json", "--json")
    assert cli.returncode == 2
    expected = json.loads(cli.stdout)
    assert api["valid"] is False and api["error_count"] == expected["error_count"] == 3
    assert _without_file(api) == _without_file(expected)
    assert {(e["path"], e["code"], e["line"]) for e in api["errors"]} >= {("lora_r", "out_of_range", 6),
                                                                          ("optimizer", "unknown_field", 9)}
    assert api["file"] == "request" and {e["file"] for e in api["errors"]} == {"request"}


def test_a_valid_config_resolves_with_its_sources_and_checks_the_dataset(light: ServerProcess) -> None:
    config = tiny_config(MODEL, DATASET, max_steps=10)
    config.pop("per_device_train_batch_size")
    response = light.request("POST", "/api/v1/validate?resolved=true&data=true", json_body=config)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["valid"] is True and body["data"]["rows"] == 48
    assert body["sources"]["per_device_train_batch_size"] == "profile:low_end"
    assert body["sources"]["lora_r"] == "file:request" and body["config"]["lora_r"] == 16


def test_a_valid_config_this_environment_cannot_run_is_refused_at_submission(light: ServerProcess,
                                                                              builtin_plugins: Any) -> None:
    """Issue 16: valid (with its warning) at /validate, refused as `modelforge train` refuses it
    (exit 3 there, 422 here) at /jobs, with the same message, and no job is created."""
    from modelforge_core.config import resolve_config
    from modelforge_core.readiness import environment_problems

    config = tiny_config(MODEL, DATASET, provider="unsloth", max_steps=10)
    expected = environment_problems(resolve_config(config, plugins=builtin_plugins), builtin_plugins)
    if not expected:
        pytest.skip("this environment can run the unsloth provider: nothing to refuse")
    validated = light.request("POST", "/api/v1/validate", json_body=config)
    assert validated.status_code == 200, validated.text
    assert validated.json()["warnings"] == expected
    before = light.request("GET", "/api/v1/jobs").json()["jobs"]
    submitted = light.request("POST", "/api/v1/jobs", json_body=config)
    assert submitted.status_code == 422, submitted.text
    error = submitted.json()["error"]
    assert error["code"] == "cannot_run_here"
    assert all(message in error["message"] for message in expected)
    assert light.request("GET", "/api/v1/jobs").json()["jobs"] == before


def test_the_schema_and_plugins_are_what_the_cli_prints(light: ServerProcess, modelforge: Run) -> None:
    schema = modelforge("schema")
    assert schema.returncode == 0
    assert light.request("GET", "/api/v1/schema").json() == json.loads(schema.stdout)
    plugins = modelforge("plugins", "--json", "--check")  # the server compiles the fragments with Ajv at start
    assert light.request("GET", "/api/v1/plugins").json() == json.loads(plugins.stdout)


def test_doctor_reports_this_machine(light: ServerProcess) -> None:
    report = light.request("GET", "/api/v1/doctor", timeout=240).json()
    assert report["device"]["device"] == "cpu"
    assert report["recommendation"]["compute_specs"] in {"low_end", "mid_range", "high_end"}


def test_the_openapi_description_is_valid_and_lists_every_route(light: ServerProcess, light_root: Path,
                                                                builtin_plugins: Any) -> None:
    from openapi_spec_validator import validate
    from starlette.routing import Route

    from modelforge_core.server.app import create_app
    from modelforge_core.server.settings import ServerSettings

    spec = light.request("GET", "/api/v1/openapi.json").json()
    validate(spec)  # raises on any violation of the OpenAPI 3.1 specification
    described = {(path, method.upper()) for path, item in spec["paths"].items() for method in item}
    app = create_app(ServerSettings.build(data_root=light_root), plugins=builtin_plugins, start_worker=False)
    served = {(route.path.replace(":path}", "}"), method) for route in app.routes
              if isinstance(route, Route) and route.path.startswith("/api/")
              for method in route.methods or () if method != "HEAD"}
    assert described == served


# --- the data root -------------------------------------------------------------------------------

def test_nothing_outside_the_data_root_can_be_read(light: ServerProcess) -> None:
    for dataset in ("../outside.jsonl", "data/escape.jsonl"):  # a path, and a symlink that leaves
        config = tiny_config(MODEL, dataset)
        for path in ("/api/v1/validate?data=true", "/api/v1/jobs"):
            response = light.request("POST", path, json_body=config)
            assert response.status_code == 400, (dataset, path)
            [error] = response.json()["errors"]
            assert (error["path"], error["code"]) == ("dataset", "outside_root")
            assert SECRET not in response.text
        preview = light.request("GET", "/api/v1/datasets/preview", params={"path": dataset})
        assert preview.status_code == 403 and SECRET not in preview.text
    not_data = light.request("GET", "/api/v1/datasets/preview", params={"path": "notes.txt"})
    assert not_data.status_code == 415 and SECRET not in not_data.text
    assert light.request("GET", "/api/v1/runs/%2E%2E/outside.jsonl").status_code == 403
    assert light.request("GET", "/api/v1/jobs/..%2Fx").status_code == 404
    assert light.request("GET", "/api/v1/jobs", params={"state": "queued"}).json() == {"jobs": []}


def test_validate_shows_rows_as_the_model_sees_them(light: ServerProcess, light_root: Path,
                                                    tiny_causal_lm: Path) -> None:
    """The web page's "as the model sees it" preview: `modelforge validate --data --show N`."""
    shutil.copytree(tiny_causal_lm, light_root / "models" / "show-tiny", dirs_exist_ok=True)
    config = {"task": "text-generation", "model_name": "models/show-tiny", "dataset": DATASET,
              "compute_specs": "low_end", "max_seq_length": 64}
    response = light.request("POST", "/api/v1/validate", params={"data": "true", "show": "2"}, json=config)
    assert response.status_code == 200, response.text
    preview = response.json()["preview"]
    answer = sample_rows("text-generation")[0]["output"]
    assert len(preview["rows"]) == 2 and preview["max_seq_length"] == 64
    assert [s["text"] for s in preview["rows"][0]["segments"] if s["trained"]] == [answer + "<|im_end|>\n"]
    assert preview["rows"][0]["where"].endswith(f"{DATASET}:1")


def test_dataset_preview_and_file_listing(light: ServerProcess) -> None:
    preview = light.request("GET", "/api/v1/datasets/preview", params={"path": DATASET, "rows": 3}).json()
    assert preview["columns"] == ["input", "output"] and len(preview["rows"]) == 3 and preview["more"] is True
    assert preview["rows"][0] == sample_rows("text-generation")[0]
    files = light.request("GET", "/api/v1/files").json()
    assert DATASET in files["datasets"] and "data/escape.jsonl" in files["datasets"]
    assert "notes.txt" not in files["datasets"]


# --- trainings -----------------------------------------------------------------------------------

def _submit(server: ServerProcess, config: dict[str, Any]) -> dict[str, Any]:
    response = server.request("POST", "/api/v1/jobs", json_body=config)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/api/v1/jobs/{job['id']}"
    return job


def _first_log(server: ServerProcess, job_id: str, after_step: int) -> dict[str, Any]:
    """The first training log record past ``after_step``, read live from the event stream."""
    for event, data in server.events(job_id):
        if event == "log" and "loss" in data and data["step"] > after_step:
            return data
        assert event != "end", f"job {job_id} ended before step {after_step + 1}: {data}"
    raise AssertionError(f"the event stream of {job_id} closed early")


def _checkpoint_step(run_dir: Path) -> int:
    checkpoint = RunDir(run_dir).last_checkpoint()
    assert checkpoint is not None, f"no checkpoint in {run_dir}"
    return int(checkpoint.name.split("-")[1])


@pytest.mark.slow
def test_jobs_queue_survive_a_restart_finish_and_cancel(tmp_path: Path, tiny_causal_lm: Path,
                                                        sample_dataset: Callable[..., Path]) -> None:
    root = tmp_path / "root"
    shutil.copytree(tiny_causal_lm, root / MODEL)
    (root / "data").mkdir()
    shutil.copy(sample_dataset("text-generation"), root / DATASET)
    long_job = tiny_config(MODEL, DATASET, max_steps=400, logging_steps=1)
    short_job = tiny_config(MODEL, DATASET, max_steps=10)

    # 1. Two jobs, one worker: the first trains, the second waits; then the server stops.
    server = ServerProcess(root, token=TOKEN).start()
    try:
        first, second = _submit(server, long_job), _submit(server, short_job)
        assert second["state"] == "queued"
        _first_log(server, first["id"], after_step=1)
        running = server.request("GET", f"/api/v1/jobs/{first['id']}").json()
        assert running["state"] == "running" and running["progress"]["step"] >= 2
        assert running["progress"]["total_steps"] == 400 and isinstance(running["progress"]["loss"], float)
        assert running["progress"]["eta_seconds"] > 0
        waiting = server.request("GET", f"/api/v1/jobs/{second['id']}").json()
        assert (waiting["state"], waiting["queue_position"]) == ("queued", 1)
        closed = server.request("GET", "/api/v1/jobs", headers={"Origin": "http://elsewhere.test"})
        assert "access-control-allow-origin" not in closed.headers  # CORS is closed by default
    finally:
        assert server.stop() == 0, server.log()
    records = root / "runs" / ".jobs" / "jobs"
    assert json.loads((records / f"{second['id']}.json").read_text("utf-8"))["state"] == "queued"
    first_run = root / first["run"]["id"]
    assert RunDir(first_run).status()["status"] == "interrupted"
    stopped_at = _checkpoint_step(first_run)

    # 2. A new server finds the queue: the waiting job runs to the end.
    with ServerProcess(root, token=TOKEN) as server:
        jobs = {job["id"]: job for job in server.request("GET", "/api/v1/jobs").json()["jobs"]}
        assert jobs[first["id"]]["state"] == "interrupted"
        assert jobs[second["id"]]["state"] in ("queued", "running")
        events = list(server.events(second["id"]))
        assert "running" in [data["state"] for event, data in events if event == "job"]
        steps = [data["step"] for event, data in events if event == "log" and "loss" in data]
        assert 5 in steps and steps[-1] == 10 and steps == sorted(steps)
        final = events[-1][1]
        assert final["state"] == "finished" and final["exit_code"] == 0
        assert final["progress"]["step"] == final["progress"]["total_steps"] == 10
        before, after = final["metrics"]["before"], final["metrics"]["after"]
        assert after["eval_loss"] < before["eval_loss"]
        second_run = root / final["run"]["id"]
        assert (second_run / "adapter" / "adapter_config.json").is_file()
        runs = {run["id"]: run for run in server.request("GET", "/api/v1/runs").json()["runs"]}
        assert runs[final["run"]["id"]]["status"] == "finished"
        assert runs[final["run"]["id"]]["metrics"]["after"]["eval_loss"] == after["eval_loss"]
        assert runs[first["run"]["id"]]["status"] == "interrupted"
        detail = server.request("GET", f"/api/v1/runs/{final['run']['id']}").json()
        assert [point["step"] for point in detail["log"] if "loss" in point] == steps

        # 3. The interrupted job resumes from its checkpoint; a cancel stops it with a new one.
        resumed = server.request("POST", f"/api/v1/jobs/{first['id']}/resume")
        assert resumed.status_code == 202 and resumed.json()["state"] == "queued"
        _first_log(server, first["id"], after_step=stopped_at)
        assert server.request("POST", f"/api/v1/jobs/{first['id']}/cancel").status_code == 202
        event, end = list(server.events(first["id"]))[-1]
        assert event == "end"
        assert end["state"] == "interrupted" and end["cancel_requested"] is True
        assert end["run"]["status"] == "interrupted"
        assert _checkpoint_step(first_run) > stopped_at
        assert server.request("POST", f"/api/v1/jobs/{second['id']}/cancel").status_code == 409
