"""The OpenAPI 3.1 description of ``/api/v1``, written by hand so that it says what the
endpoints promise (the tests check it against the OpenAPI specification and against the
routes the server really has)."""

from __future__ import annotations

from typing import Any

from .. import __version__

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _flag(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "boolean", "default": False}}


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"},
          "description": "The job's id, as returned when it was submitted."}
CONFIG_BODY = {
    "required": True,
    "description": "A training config: the same JSON object a config file holds. Relative paths are "
                   "relative to the server's data root; paths outside it are refused.",
    "content": {JSON: {"schema": {"type": "object", "description": "See GET /api/v1/schema."}}},
}
COMMON = {"401": _error("No or a wrong bearer token (only when the server has a token)."),
          "403": _error("A state-changing request from another web site's page.")}


def _op(summary: str, responses: dict[str, Any], *, description: str = "", **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **COMMON}}
    if description:
        op["description"] = description
    op.update(extra)
    return op


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string", "examples": ["not_found"]}, "message": {"type": "string"}}}},
    },
    "Problem": {
        "type": "object", "required": ["path", "message", "code"],
        "description": "One problem, exactly as `modelforge validate --json` reports it.",
        "properties": {
            "path": {"type": "string", "examples": ["lora_r"]}, "message": {"type": "string"},
            "code": {"type": "string", "examples": ["maximum", "outside_root", "parse"]},
            "hint": {"type": "string"}, "file": {"type": ["string", "null"]}, "line": {"type": ["integer", "null"]},
            "column": {"type": ["integer", "null"]},
        },
        "additionalProperties": True,
    },
    "ValidationReport": {
        "type": "object", "required": ["valid", "error_count", "errors"],
        "description": "The output of `modelforge validate --json`; `file` is \"request\".",
        "properties": {"valid": {"const": False}, "subject": {"type": "string"}, "file": {"type": "string"},
                       "error_count": {"type": "integer"}, "errors": {"type": "array", "items": _ref("Problem")}},
    },
    "Valid": {
        "type": "object", "required": ["valid"],
        "properties": {"valid": {"const": True}, "file": {"type": "string"},
                       "warnings": {"type": "array", "items": {"type": "string"},
                                    "description": "What this installation lacks to train the (valid) config: "
                                                   "a job submitted with it is refused (422 cannot_run_here)."},
                       "config": {"type": "object", "description": "The resolved config (with ?resolved=true)."},
                       "sources": {"type": "object", "additionalProperties": {"type": "string"}},
                       "data": {"type": "object", "properties": {"file": {"type": "string"},
                                                                 "rows": {"type": "integer"},
                                                                 "shape": {"type": "string"}}}},
    },
    "Progress": {
        "type": "object",
        "properties": {
            "step": {"type": "integer"}, "total_steps": {"type": ["integer", "null"]},
            "loss": {"type": ["number", "null"]}, "learning_rate": {"type": ["number", "null"]},
            "epoch": {"type": ["number", "null"]}, "steps_per_second": {"type": ["number", "null"]},
            "eta_seconds": {"type": ["number", "null"]},
        },
    },
    "Metrics": {
        "type": "object", "description": "Metrics before and after training, by name.",
        "properties": {"before": {"type": "object", "additionalProperties": {"type": "number"}},
                       "after": {"type": "object", "additionalProperties": {"type": "number"}}},
    },
    "Job": {
        "type": "object", "required": ["id", "state", "created_at", "run"],
        "properties": {
            "id": {"type": "string"},
            "state": {"enum": ["queued", "running", "finished", "failed", "interrupted", "cancelled"]},
            "created_at": {"type": "string"}, "started_at": {"type": ["string", "null"]},
            "ended_at": {"type": ["string", "null"]}, "error": {"type": ["string", "null"]},
            "exit_code": {"type": ["integer", "null"]}, "cancel_requested": {"type": "boolean"},
            "resume": {"type": "boolean"}, "attempts": {"type": "integer"},
            "queue_position": {"type": "integer", "description": "Only for queued jobs; 1 runs next."},
            "config": {"type": "object", "description": "Task, strategy, provider, model, dataset, rows."},
            "run": {"type": "object", "properties": {
                "id": {"type": "string", "description": "The run folder, relative to the data root."},
                "name": {"type": "string"}, "status": {"type": ["string", "null"]},
                "checkpoint": {"type": ["string", "null"]}}},
            "progress": {"oneOf": [_ref("Progress"), {"type": "null"}]},
            "metrics": _ref("Metrics"),
        },
    },
    "Run": {
        "type": "object", "required": ["id", "name", "status"],
        "description": "What `modelforge runs --json` reports of a run folder, with `id` (the folder "
                       "relative to the data root) instead of its absolute path.",
        "properties": {
            "id": {"type": "string"}, "name": {"type": "string"},
            "status": {"type": "string", "examples": ["running", "finished", "failed", "interrupted", "stale"]},
            "task": {"type": ["string", "null"]}, "strategy": {"type": ["string", "null"]},
            "provider": {"type": ["string", "null"]}, "model": {"type": ["string", "null"]},
            "dataset": {"type": ["string", "null"]}, "started_at": {"type": ["string", "null"]},
            "ended_at": {"type": ["string", "null"]}, "duration_s": {"type": ["number", "null"]},
            "global_step": {"type": ["integer", "null"]}, "metrics": _ref("Metrics"),
            "error": {"type": ["string", "null"]}, "note": {"type": ["string", "null"]},
            "evaluations": {"type": "integer"}, "merged": {"type": "boolean"},
            "has_adapter": {"type": "boolean"}, "checkpoint": {"type": ["string", "null"]},
            "job_id": {"type": ["string", "null"], "description": "The job that trained it, if any."},
        },
    },
    "Preview": {
        "type": "object", "required": ["path", "rows", "columns"],
        "properties": {"path": {"type": "string"}, "format": {"enum": ["jsonl", "json"]},
                       "rows": {"type": "array", "items": {"type": "object"}},
                       "columns": {"type": "array", "items": {"type": "string"}},
                       "problems": {"type": "array", "items": {"type": "object"}}, "more": {"type": "boolean"}},
    },
}


def openapi_spec() -> dict[str, Any]:
    """The document served at ``/api/v1/openapi.json``."""
    validation = {"200": _json(_ref("Valid"), "The config is valid."),
                  "400": _json({"oneOf": [_ref("ValidationReport")]},
                               "Every problem, with its path and code, as `modelforge validate --json`."),
                  "413": _error("The body is larger than the server's limit (1 MiB by default)."),
                  "415": _error("The body is not sent as application/json.")}
    paths: dict[str, Any] = {
        "/api/v1/health": {"get": _op("Liveness and version", {"200": _json({"type": "object"}, "Up.")})},
        "/api/v1/openapi.json": {"get": _op("This description", {"200": _json({"type": "object"}, "OpenAPI 3.1.")})},
        "/api/v1/schema": {"get": _op(
            "The effective config schema", {"200": _json({"type": "object"}, "JSON Schema, Draft 2020-12.")},
            description="The canonical schema plus the installed plugins' options and compatibility rules: "
                        "what `modelforge schema` prints.")},
        "/api/v1/plugins": {"get": _op("Installed plugins", {"200": _json(
            {"type": "object", "properties": {"plugins": {"type": "array"}, "skipped": {"type": "array"},
                                              "schema_problems": {"type": ["object", "null"]}}},
            "What `modelforge plugins --json --check` prints: with each plugin schema fragment that Ajv (strict "
            "mode) cannot compile (null without Node.js).")})},
        "/api/v1/doctor": {"get": _op("This machine's hardware and the profile it suits", {
            "200": _json({"type": "object"}, "What `modelforge doctor --json` prints."),
            "502": _error("modelforge doctor failed.")})},
        "/api/v1/validate": {"post": _op(
            "Validate a config", validation, requestBody=CONFIG_BODY,
            parameters=[_flag("resolved", "Also return the resolved config and each value's source."),
                        _flag("data", "Also check the dataset row by row.")])},
        "/api/v1/jobs": {
            "get": _op("List jobs, newest first", {"200": _json(
                {"type": "object", "properties": {"jobs": {"type": "array", "items": _ref("Job")}}}, "The jobs.")},
                parameters=[{"name": "state", "in": "query", "required": False, "schema": {"type": "string"},
                             "description": "Only jobs in this state."}]),
            "post": _op(
                "Start a training", {
                    "202": _json(_ref("Job"), "Queued; the Location header names the job."),
                    "400": validation["400"], "409": _error("output_dir is in use already."),
                    "413": validation["413"], "415": validation["415"],
                    "422": _error("Valid, but this installation cannot run it (cannot_run_here: a plugin or "
                                  "package is missing; what `modelforge train` refuses with exit 3).")},
                description="Validates the config and its dataset, then queues the training. The worker "
                            "runs one job at a time by default, oldest first.",
                requestBody=CONFIG_BODY,
                parameters=[_flag("force", "Train even when the memory plan says the config cannot fit.")]),
        },
        "/api/v1/jobs/{job_id}": {"get": _op(
            "A job: state, step, loss, ETA, metrics", {"200": _json(_ref("Job"), "The job."),
                                                       "404": _error("No such job.")},
            parameters=[JOB_ID])},
        "/api/v1/jobs/{job_id}/events": {"get": _op(
            "Progress events (server-sent events)",
            {"200": {"description": "`event: log` (one per log.jsonl record: step, loss, learning_rate; "
                                    "stage records), `event: job` (the job, whenever it changes), "
                                    "`event: end` (the final job; the stream closes).",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}},
             "404": _error("No such job.")},
            parameters=[JOB_ID])},
        "/api/v1/jobs/{job_id}/cancel": {"post": _op(
            "Cancel a job", {"202": _json(_ref("Job"), "A queued job is dropped; a running training "
                                                       "saves a checkpoint and ends `interrupted`."),
                             "404": _error("No such job."), "409": _error("The job has ended already.")},
            parameters=[JOB_ID])},
        "/api/v1/jobs/{job_id}/resume": {"post": _op(
            "Resume an interrupted job from its last checkpoint",
            {"202": _json(_ref("Job"), "Queued again."), "404": _error("No such job."),
             "409": _error("The job is not interrupted or has no checkpoint.")},
            parameters=[JOB_ID])},
        "/api/v1/runs": {"get": _op("Run folders with their status and metrics", {"200": _json(
            {"type": "object", "properties": {"runs": {"type": "array", "items": _ref("Run")}}}, "Newest first.")})},
        "/api/v1/runs/{run_id}": {"get": _op(
            "One run: status, metrics, progress and its logged steps (for a chart)",
            {"200": _json({"allOf": [_ref("Run"), {"type": "object", "properties": {
                "progress": _ref("Progress"), "log": {"type": "array", "items": {"type": "object"}}}}]}, "The run."),
             "403": _error("Outside the data root."), "404": _error("No such run folder.")},
            parameters=[{"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"},
                         "description": "The run folder relative to the data root, e.g. runs/tiny-sft-j2026..."}])},
        "/api/v1/files": {"get": _op("Dataset files and model folders under the data root", {"200": _json(
            {"type": "object", "properties": {"datasets": {"type": "array", "items": {"type": "string"}},
                                              "models": {"type": "array", "items": {"type": "string"}},
                                              "truncated": {"type": "boolean"}}}, "Paths relative to the root.")})},
        "/api/v1/datasets/preview": {"get": _op(
            "The first rows of a dataset, parsed",
            {"200": _json(_ref("Preview"), "Rows as JSON objects; long strings are shortened."),
             "403": _error("Outside the data root."), "404": _error("No such file."),
             "415": _error("Not a dataset file (.jsonl, .json, .jsonlines, .ndjson)."),
             "422": _error("Not UTF-8 or not valid JSON.")},
            parameters=[{"name": "path", "in": "query", "required": True, "schema": {"type": "string"},
                         "description": "Relative to the data root."},
                        {"name": "rows", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": 50, "default": 5}}])},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "ModelForge training API", "version": __version__,
                 "description": "Validate training configs, start and follow trainings, list runs. "
                                "When the server has a token, every /api route needs "
                                "'Authorization: Bearer TOKEN'."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
    }
