"""A real ``modelforge serve`` in a child process, for tests of the API and of frontends.

    with ServerProcess(data_root, token="t0ken") as server:
        server.request("GET", "/api/v1/health").json()

It listens on a free loopback port, is waited for until it answers, and is stopped the way a
person stops it (SIGINT), so its shutdown path (trainings interrupted with a checkpoint,
queued jobs kept) is what a test sees. Needs the ``serve`` extra (httpx is its client).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from .settings import TOKEN_ENV

#: Seconds a server may take to answer its first request (plugins load; the CPU may be busy).
START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess:
    """``modelforge serve --data-root ROOT`` plus ``args`` on a free port; see the module docstring."""

    def __init__(self, data_root: Path, *args: str, token: str | None = None, log_file: Path | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.data_root = data_root
        self.args = list(args)
        self.token = token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = log_file or data_root.parent / f"serve-{self.port}.log"
        # The token travels in the environment, as the docs advise (a command line shows in `ps`).
        self.env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        self.env.update(env or {})
        if token:
            self.env[TOKEN_ENV] = token
        self.process: subprocess.Popen[bytes] | None = None
        # A new connection per request: a kept-alive one that the server closes after its idle
        # timeout races with the next request ("Server disconnected without sending a response").
        self.client = httpx.Client(base_url=self.url, timeout=60.0,
                                   limits=httpx.Limits(max_keepalive_connections=0))

    def command(self) -> list[str]:
        return [sys.executable, "-m", "modelforge_core", "serve", "--port", str(self.port),
                "--data-root", str(self.data_root), *self.args]

    def start(self) -> ServerProcess:
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"modelforge serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                self.request("GET", "/api/v1/health")
                return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"modelforge serve did not answer in {START_TIMEOUT:.0f} s:\n{self.log()}")

    def stop(self, timeout: float = 300.0) -> int:
        """SIGINT, as Ctrl-C does, and wait: running trainings save a checkpoint first."""
        self.client.close()
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def log(self) -> str:
        try:
            return self.log_file.read_text("utf-8", "replace")[-20_000:]
        except OSError:
            return ""

    def headers(self, token: bool = True) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if token and self.token else {}

    def request(self, method: str, path: str, *, json_body: Any = None, token: bool = True,
                headers: Mapping[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        merged = {**self.headers(token), **(headers or {})}
        if json_body is not None:
            kwargs["content"] = json.dumps(json_body)
            merged.setdefault("Content-Type", "application/json")
        return self.client.request(method, path, headers=merged, **kwargs)

    def events(self, job_id: str, timeout: float = 600.0) -> Iterator[tuple[str, dict[str, Any]]]:
        """The job's server-sent events as ``(event, data)`` until ``end`` (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self.client.stream("GET", f"/api/v1/jobs/{job_id}/events", headers=self.headers()) as response:
            response.raise_for_status()
            event, data = "message", []
            for line in response.iter_lines():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} did not end in {timeout:.0f} s")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip(" "))
                elif not line and data:
                    yield event, json.loads("\n".join(data))
                    if event == "end":
                        return
                    event, data = "message", []

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


def run_cli(*args: str | Path, cwd: Path | None = None, env: Mapping[str, str] | None = None,
            timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``python -m modelforge_core ARGS`` (the ``modelforge`` command) in a child process."""
    command: Sequence[str] = [sys.executable, "-m", "modelforge_core", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, check=False)
