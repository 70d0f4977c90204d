"""The Starlette application behind ``modelforge serve``: the ``/api/v1`` routes, the web page
at ``/``, and the guards every request passes (host, bearer token, origin, body size)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..config import Document, ResolvedConfig, resolve_config, resolve_paths
from ..errors import ConfigError, ValidationFailed, shorten
from ..jsonpos import loads_with_lines
from ..plugins import Plugins, get_plugins, plugins_report
from ..readiness import environment_problems
from ..runs import CONFIG_FILE, default_run_name, output_dir_problem
from ..schema import effective_schema
from ..web import STATIC_DIR
from .files import FileProblem, list_files, preview_dataset, resolve_inside
from .jobs import (
    FAILED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    TERMINAL,
    Job,
    JobStore,
    chart_points,
    iter_run_dirs,
    new_job_id,
    progress,
    read_log,
    run_summary,
)
from .openapi import openapi_spec
from .settings import ServerSettings, is_loopback

log = logging.getLogger("modelforge.server")

API = "/api/v1"
#: The file name validation problems carry for a config sent in a request body.
REQUEST_FILE = "request"
#: Seconds between two looks at a running job by an event stream.
EVENT_POLL_SECONDS = 0.5
#: ``modelforge doctor`` is slow (it imports torch): its report is reused this long.
DOCTOR_CACHE_SECONDS = 60.0
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PAGE_CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


class ApiError(HTTPException):
    """An error answered as ``{"error": {"code", "message"}}`` with ``status_code``."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(status_code, message)
        self.code = code


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


# --- guards ------------------------------------------------------------------------------------

class Guard:
    """Pure ASGI middleware: the Host header (DNS rebinding), the bearer token on ``/api``,
    the Origin of state-changing requests (cross-site forgery), the body size, and security
    headers on every response."""

    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        self.app = app
        self.settings = settings
        self.token = settings.token.encode() if settings.token else None
        # Without a token, a loopback server answers only to loopback names: a web page that
        # rebinds its own domain to 127.0.0.1 cannot talk to it.
        self.check_host = self.token is None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope["path"]
        method: str = scope["method"]
        refusal = self.refuse(headers, path, method)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        limit = self.settings.max_body_bytes
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ApiError(413, "too_large", f"the request body is larger than {limit} bytes")
            return message

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                         (b"x-frame-options", b"DENY")]
                if path.startswith("/api/"):
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, limited_receive, send_with_headers)

    def refuse(self, headers: Mapping[str, str], path: str, method: str) -> Response | None:
        if self.check_host:
            host = urlsplit(f"//{headers.get('host', '')}").hostname or ""
            if not is_loopback(host):
                return JSONResponse(error_body("bad_host", "this server answers to localhost only"), 421)
        if method in UNSAFE_METHODS and not self.same_origin(headers):
            return JSONResponse(error_body("cross_origin", "requests from other web sites are refused "
                                           "(start the server with --cors-origin to allow one)"), 403)
        if path.startswith("/api/") and self.token is not None and method != "OPTIONS":
            given = headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token):
                return JSONResponse(error_body("unauthorized", "send the server's token as "
                                               "'Authorization: Bearer TOKEN'"), 401,
                                    headers={"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.settings.max_body_bytes:
            return JSONResponse(error_body("too_large", f"the request body is larger than "
                                           f"{self.settings.max_body_bytes} bytes"), 413)
        return None

    def same_origin(self, headers: Mapping[str, str]) -> bool:
        origin = headers.get("origin")
        if origin is None:
            return True  # not a browser page (curl, a script): the token is the guard
        if origin.rstrip("/") in self.settings.cors_origins:
            return True
        parts = urlsplit(origin)
        return parts.netloc.lower() == headers.get("host", "").lower()


# --- the worker process ------------------------------------------------------------------------

class WorkerSupervisor:
    """Starts the worker process, restarts it if it dies, stops it with the server."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self.closing = False

    def command(self) -> list[str]:
        s = self.settings
        return [sys.executable, "-m", "modelforge_core.server.worker", "--state-dir", str(s.state_dir),
                "--data-root", str(s.data_root), "--concurrency", str(s.concurrency),
                "--stop-timeout", str(s.stop_timeout), "--parent-pid", str(os.getpid())]

    def start(self) -> None:
        # Its own session: a Ctrl-C in the server's terminal reaches the server only, which then
        # stops the worker, which interrupts each training exactly once.
        self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, start_new_session=True)

    async def watch(self) -> None:
        while not self.closing:
            await asyncio.sleep(1.0)
            if self.process is not None and self.process.poll() is not None and not self.closing:
                log.warning("the job worker exited (code %s); starting it again", self.process.returncode)
                self.start()

    def stop(self) -> None:
        self.closing = True
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=self.settings.stop_timeout + 15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the application ---------------------------------------------------------------------------

class Service:
    """What the routes share: settings, plugins, the effective schema, the job store."""

    def __init__(self, settings: ServerSettings, plugins: Plugins) -> None:
        self.settings = settings
        self.plugins = plugins
        self.schema = effective_schema(plugins.registry)
        # Ajv (strict mode) compiles each plugin's fragment now, as the page will: a broken one is
        # reported by /plugins and in the log instead of blanking the form.
        from ..ajv import plugin_schema_problems

        self.schema_problems = plugin_schema_problems(plugins.registry)
        for name, problem in (self.schema_problems or {}).items():
            log.warning("the web form cannot compile the %s: %s", name, problem)
        self.store = JobStore(settings.state_dir)
        self.doctor_report: tuple[float, dict[str, Any]] | None = None
        self.doctor_lock = asyncio.Lock()
        #: Held while a submission checks its output_dir and records its job.
        self.submit_lock = threading.Lock()

    # -- configs ------------------------------------------------------------------------------

    async def read_document(self, request: Request) -> Document:
        """The request body as a config :class:`Document` (lines kept, as for a file)."""
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise ApiError(415, "unsupported_media_type",
                           "send the config as JSON with 'Content-Type: application/json'")
        body = await request.body()
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"not UTF-8 text (byte {exc.start})", file=REQUEST_FILE) from None
        if not text.strip():
            raise ConfigError("the request body is empty: send the config as a JSON object", file=REQUEST_FILE)
        try:
            data, lines = loads_with_lines(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid JSON: {exc.msg}", file=REQUEST_FILE, line=exc.lineno,
                              column=exc.colno) from None
        except RecursionError:
            raise ConfigError("invalid JSON: nested too deeply", file=REQUEST_FILE) from None
        return Document(data, REQUEST_FILE, lines)

    def resolve(self, document: Document, *, check_data: bool) -> tuple[ResolvedConfig, Any]:
        """Validate as ``modelforge validate`` does, relative paths against the data root and
        every path refused outside it."""
        root = self.settings.data_root
        resolved = resolve_config(document, plugins=self.plugins, base_dir=root, data_root=root)
        data = None
        if check_data:
            from ..data import check_dataset

            data = check_dataset(resolved, plugins=self.plugins)
        return resolved, data

    # -- views --------------------------------------------------------------------------------

    def shown(self, value: Any) -> Any:
        """A path value as the API shows it: relative to the data root."""
        if isinstance(value, str) and os.path.isabs(value):
            return self.settings.relative(value)
        return value

    def job_view(self, job: Job, records: list[dict[str, Any]] | None = None,
                 queue: list[Job] | None = None) -> dict[str, Any]:
        run_dir = Path(job.run_dir)
        has_run = (run_dir / CONFIG_FILE).is_file()
        summary = run_summary(run_dir) if has_run else None
        view: dict[str, Any] = {
            "id": job.id, "state": job.state, "created_at": job.created_at, "started_at": job.started_at,
            "ended_at": job.ended_at, "error": job.error, "exit_code": job.exit_code,
            "cancel_requested": job.cancel_requested, "resume": job.resume, "attempts": job.attempts,
            "config": {k: self.shown(v) for k, v in job.summary.items()},
            "run": {"id": self.settings.relative(run_dir), "name": run_dir.name,
                    "status": summary["status"] if summary else None,
                    "checkpoint": summary["checkpoint"] if summary else None},
            "progress": progress(run_dir, records) if has_run else None,
            "metrics": summary["metrics"] if summary else {},
        }
        if job.state == QUEUED:
            queue = queue if queue is not None else self.store.all()
            ahead = [j for j in queue if j.state in (QUEUED, RUNNING) and j.created_ns < job.created_ns]
            view["queue_position"] = len([j for j in ahead if j.state == QUEUED]) + 1
        return view

    def job(self, job_id: str) -> Job:
        try:
            return self.store.get(job_id)
        except KeyError:
            raise ApiError(404, "not_found", f"no job {shorten(repr(job_id), 80)}") from None

    def run_view(self, folder: Path) -> dict[str, Any]:
        summary = run_summary(folder)
        summary.pop("path")
        summary.update(id=self.settings.relative(folder), model=self.shown(summary["model"]),
                       dataset=self.shown(summary["dataset"]))
        return summary

    def runs(self) -> list[dict[str, Any]]:
        jobs = self.store.all()
        by_run = {Path(j.run_dir): j.id for j in jobs}
        folders = {*iter_run_dirs(self.settings.runs_dir),
                   *(p for p in by_run if (p / CONFIG_FILE).is_file())}
        out = []
        for folder in folders:
            try:
                view = self.run_view(folder)
            except Exception as exc:  # one damaged folder never hides the others
                from ..runlist import damaged

                log.warning("run folder %s is damaged: %r", folder, exc)
                view = damaged(folder, type(exc).__name__).to_json()
                view.pop("path")
                view.update(id=self.settings.relative(folder), dataset=None, has_adapter=False, checkpoint=None)
            out.append({**view, "job_id": by_run.get(folder)})
        return sorted(out, key=lambda r: (r["started_at"] or "", r["id"]), reverse=True)


def create_app(settings: ServerSettings, *, plugins: Plugins | None = None, start_worker: bool = True) -> Starlette:
    """The ASGI application for ``settings``; the worker starts with the app's lifespan."""
    service = Service(settings, plugins or get_plugins())
    supervisor = WorkerSupervisor(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.store.ensure()
        watcher = None
        if start_worker:
            supervisor.start()
            watcher = asyncio.create_task(supervisor.watch())
        try:
            yield
        finally:
            supervisor.closing = True
            if watcher is not None:
                watcher.cancel()
            await anyio.to_thread.run_sync(supervisor.stop)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__, "token_required": settings.token is not None})

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_spec())

    async def schema(request: Request) -> Response:
        return JSONResponse(service.schema)

    async def plugins_view(request: Request) -> Response:
        return JSONResponse({**plugins_report(service.plugins), "schema_problems": service.schema_problems})

    async def doctor(request: Request) -> Response:
        async with service.doctor_lock:
            cached = service.doctor_report
            if cached is None or time.monotonic() - cached[0] > DOCTOR_CACHE_SECONDS:
                cached = service.doctor_report = (time.monotonic(), await run_doctor())
        return JSONResponse(cached[1])

    async def validate(request: Request) -> Response:
        document = await service.read_document(request)
        check_data = _flag(request, "data")
        try:
            show = min(int(request.query_params.get("show", "0")), 50)
        except ValueError:
            raise ApiError(400, "bad_request", "show must be an integer") from None
        resolved, data = await anyio.to_thread.run_sync(lambda: service.resolve(document, check_data=check_data))
        out: dict[str, Any] = {"valid": True, "file": REQUEST_FILE,
                               "warnings": environment_problems(resolved, service.plugins)}
        if _flag(request, "resolved"):
            out.update(resolved.to_json())
        if data is not None:
            out["data"] = data.to_json()
            if show > 0:  # rows as the model sees them, as `modelforge validate --data --show N`
                from ..preview import show as show_rows

                shown = await anyio.to_thread.run_sync(lambda: show_rows(resolved, data, show, plugins=service.plugins))
                out["preview"] = shown.to_json()
        return JSONResponse(out)

    async def jobs(request: Request) -> Response:
        if request.method == "POST":
            return await submit(request)
        everything = service.store.all()
        state = request.query_params.get("state")
        chosen = [j for j in everything if state is None or j.state == state]
        return JSONResponse({"jobs": [service.job_view(j, queue=everything) for j in reversed(chosen)]})

    async def submit(request: Request) -> Response:
        document = await service.read_document(request)
        force = _flag(request, "force")

        def prepare() -> Job:
            resolved, data = service.resolve(document, check_data=True)
            problems = environment_problems(resolved, service.plugins)
            if problems:  # what `modelforge train` refuses with exit 3
                raise ApiError(422, "cannot_run_here", "this environment cannot run the config: "
                               + "; ".join(problems))
            job_id = new_job_id()
            if not resolved.get("output_dir"):
                run_dir = settings.runs_dir / f"{default_run_name(resolved)}-{job_id}"
                summary = job_summary(resolved, len(data.rows))
                config = resolve_paths(dict(document.data), settings.data_root)
                return service.store.create(config, run_dir, force=force, summary=summary, job_id=job_id)
            run_dir = Path(resolved["output_dir"])
            # Check and create under one lock: of concurrent submissions for one output_dir,
            # exactly one is accepted (the server is the only writer of its job folder).
            with service.submit_lock:
                active = {Path(j.run_dir).resolve() for j in service.store.all() if j.state not in TERMINAL}
                if run_dir.resolve() in active or (run_dir.is_dir() and any(run_dir.iterdir())):
                    raise ApiError(409, "run_exists", f"output_dir {settings.relative(run_dir)} is in use already: "
                                   "choose another one, or leave output_dir out")
                problem = output_dir_problem(run_dir)
                if problem:
                    raise ApiError(400, "bad_output_dir", problem.replace(str(settings.data_root) + os.sep, ""))
                summary = job_summary(resolved, len(data.rows))
                config = resolve_paths(dict(document.data), settings.data_root)
                return service.store.create(config, run_dir, force=force, summary=summary, job_id=job_id)

        job = await anyio.to_thread.run_sync(prepare)
        return JSONResponse(service.job_view(job), 202, headers={"Location": f"{API}/jobs/{job.id}"})

    async def job_detail(request: Request) -> Response:
        job = service.job(request.path_params["job_id"])
        return JSONResponse(await anyio.to_thread.run_sync(service.job_view, job))

    async def cancel(request: Request) -> Response:
        job = service.job(request.path_params["job_id"])
        if job.state in TERMINAL:
            raise ApiError(409, "not_active", f"job {job.id} is {job.state} already: nothing to cancel")
        service.store.request_cancel(job.id)
        return JSONResponse({**service.job_view(job), "cancel_requested": True}, 202)

    async def resume(request: Request) -> Response:
        job = service.job(request.path_params["job_id"])
        view = service.job_view(job)
        if job.state not in (INTERRUPTED, FAILED) or not view["run"]["checkpoint"]:
            raise ApiError(409, "not_resumable", f"job {job.id} is {job.state}"
                           + ("" if view["run"]["checkpoint"] else " and its run has no checkpoint")
                           + ": only an interrupted run with a checkpoint can be resumed")
        service.store.clear_cancel(job.id)
        job.state, job.resume, job.error, job.exit_code, job.ended_at = QUEUED, True, None, None, None
        job.cancel_requested = False
        service.store.save(job)
        return JSONResponse(service.job_view(job), 202)

    async def events(request: Request) -> Response:
        from sse_starlette import EventSourceResponse

        job_id = request.path_params["job_id"]
        service.job(job_id)  # 404 before the stream starts

        async def stream() -> AsyncIterator[dict[str, str]]:
            offset = 0
            history: list[dict[str, Any]] = []
            last = ""
            while True:
                job = await anyio.to_thread.run_sync(service.store.get, job_id)
                records, offset = await anyio.to_thread.run_sync(read_log, Path(job.run_dir), offset)
                for record in records:
                    yield {"event": "log", "data": json.dumps(record)}
                history.extend(records)
                view = await anyio.to_thread.run_sync(service.job_view, job, history)
                text = json.dumps(view)
                if text != last:
                    yield {"event": "job", "data": text}
                    last = text
                if job.state in TERMINAL:
                    yield {"event": "end", "data": text}
                    return
                await asyncio.sleep(EVENT_POLL_SECONDS)

        return EventSourceResponse(stream(), ping=15)

    async def runs(request: Request) -> Response:
        return JSONResponse({"runs": await anyio.to_thread.run_sync(service.runs)})

    async def run_detail(request: Request) -> Response:
        folder = _inside_or_error(settings, request.path_params["run_id"])
        if not (folder / CONFIG_FILE).is_file():
            raise ApiError(404, "not_found", f"no run folder {shorten(repr(request.path_params['run_id']), 80)}")

        def detail() -> dict[str, Any]:
            records, _ = read_log(folder)
            return {**service.run_view(folder), "progress": progress(folder, records), "log": chart_points(records)}

        return JSONResponse(await anyio.to_thread.run_sync(detail))

    async def files(request: Request) -> Response:
        listing = await anyio.to_thread.run_sync(list_files, settings.data_root, settings.runs_dir)
        return JSONResponse(listing)

    async def preview(request: Request) -> Response:
        given = request.query_params.get("path", "")
        try:
            rows = int(request.query_params.get("rows", "5"))
        except ValueError:
            raise ApiError(400, "bad_request", "rows must be an integer") from None
        try:
            result = await anyio.to_thread.run_sync(preview_dataset, settings.data_root, given, rows)
        except FileProblem as problem:
            raise ApiError(problem.status, problem.code, problem.message) from None
        return JSONResponse(result.to_json())

    routes = [
        Route("/", index),
        Route(f"{API}/health", health),
        Route(f"{API}/openapi.json", openapi),
        Route(f"{API}/schema", schema),
        Route(f"{API}/plugins", plugins_view),
        Route(f"{API}/doctor", doctor),
        Route(f"{API}/validate", validate, methods=["POST"]),
        Route(f"{API}/jobs", jobs, methods=["GET", "POST"]),
        Route(f"{API}/jobs/{{job_id}}", job_detail),
        Route(f"{API}/jobs/{{job_id}}/events", events),
        Route(f"{API}/jobs/{{job_id}}/cancel", cancel, methods=["POST"]),
        Route(f"{API}/jobs/{{job_id}}/resume", resume, methods=["POST"]),
        Route(f"{API}/runs", runs),
        Route(f"{API}/runs/{{run_id:path}}", run_detail),
        Route(f"{API}/files", files),
        Route(f"{API}/datasets/preview", preview),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    middleware = []
    if settings.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                                     allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"],
                                     max_age=600))
    middleware.append(Middleware(Guard, settings=settings))
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        HTTPException: _http_error, ValidationFailed: _validation_error, ConfigError: _config_error,
        Exception: _internal_error,
    }
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers, lifespan=lifespan)


# --- helpers -----------------------------------------------------------------------------------

def job_summary(resolved: Any, rows: int) -> dict[str, Any]:
    """What a job's record keeps of its config. The job itself trains the user's own values (not
    the resolved ones, so the run records the same provenance as a file would), with paths made
    absolute against the data root."""
    summary = {k: resolved.get(k) for k in ("task", "strategy", "provider", "model_name", "dataset",
                                            "compute_specs", "max_steps", "num_train_epochs")}
    summary["rows"] = rows
    return summary


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


def _inside_or_error(settings: ServerSettings, given: str) -> Path:
    try:
        return resolve_inside(settings.data_root, given)
    except FileProblem as problem:
        raise ApiError(problem.status, problem.code, problem.message) from None
    except (OSError, ValueError):  # a name too long for the filesystem, a NUL byte
        raise ApiError(400, "bad_path", f"{shorten(repr(given), 80)} is not a usable path") from None


async def run_doctor() -> dict[str, Any]:
    """``modelforge doctor --json`` in a child process: it imports torch, which the server never does."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "modelforge_core", "doctor", "--json",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout=180)
    except asyncio.TimeoutError:
        process.kill()
        raise ApiError(504, "doctor_timeout", "modelforge doctor did not answer in 180 s") from None
    if process.returncode != 0:
        raise ApiError(502, "doctor_failed", f"modelforge doctor failed (exit code {process.returncode}); "
                       "run it in a terminal to see why")
    report: dict[str, Any] = json.loads(out)
    return report


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = getattr(exc, "code", None) or {400: "bad_request", 401: "unauthorized", 403: "forbidden",
                                          404: "not_found", 405: "method_not_allowed", 413: "too_large"
                                          }.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc, ApiError) else {
        404: "no such endpoint", 405: "this endpoint does not take that method"}.get(exc.status_code, str(exc.detail))
    if not request.url.path.startswith("/api/") and exc.status_code == 404:
        return Response("not found\n", 404, media_type="text/plain")
    return JSONResponse(error_body(code, message), exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    from ..cli.output import problems_json

    assert isinstance(exc, ValidationFailed)
    return JSONResponse({**problems_json(exc), "file": REQUEST_FILE}, 400)


async def _config_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ConfigError)
    # The shape `modelforge validate --json` prints for a file it cannot parse.
    return JSONResponse({"valid": False, "file": REQUEST_FILE, "error_count": 1, "errors": [
        {"path": "(root)", "message": str(exc), "code": "parse", "file": exc.file, "line": exc.line,
         "column": exc.column}]}, 400)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body("internal", "internal server error; the server's log has the details"), 500)
