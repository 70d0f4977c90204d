"""``modelforge serve``: the HTTP API and the web page (needs the ``serve`` extra)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..errors import UsageError


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but a loopback address needs --token.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", default=None, metavar="TOKEN",
              help="Bearer token every /api request must send (default: $MODELFORGE_API_TOKEN).")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Only datasets, models and run folders under this folder can be used [default: the "
                   "current folder].")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where new runs go, inside the data root [default: DATA_ROOT/runs].")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where job records are kept [default: RUNS_DIR/.jobs].")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Allow pages from this origin (repeatable); none by default.")
@click.option("--concurrency", default=1, show_default=True, type=int, help="Trainings run at the same time.")
def serve(host: str, port: int, token: str | None, data_root: Path | None, runs_dir: Path | None,
          state_dir: Path | None, cors_origins: tuple[str, ...], concurrency: int) -> None:
    """Serve the training API under /api/v1 and a web page at / that builds its form from the
    schema. Trainings run one at a time (queued after that) in a worker process; jobs survive a
    restart.
    """
    from ..server.settings import TOKEN_ENV, ServerSettings

    try:
        import uvicorn

        from ..server.app import create_app
        from ..server.lock import hold_state_lock
    except ImportError as exc:
        raise UsageError(f"modelforge serve needs the 'serve' extra ({exc.name} is missing): "
                         "pip install 'modelforge-core[serve]'") from None
    settings = ServerSettings.build(host=host, port=port, token=token or os.environ.get(TOKEN_ENV),
                                    data_root=data_root, runs_dir=runs_dir, state_dir=state_dir,
                                    cors_origins=cors_origins, concurrency=concurrency)
    lock = hold_state_lock(settings.state_dir)
    click.echo(f"ModelForge API on {settings.url}/api/v1, web page on {settings.url}/", err=True)
    click.echo(f"  data root {settings.data_root}, runs {settings.runs_dir}, jobs {settings.state_dir}"
               + ("" if settings.token else " (no token: loopback only)"), err=True)
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning",
                    timeout_graceful_shutdown=5, server_header=False)
    finally:
        lock.close()
