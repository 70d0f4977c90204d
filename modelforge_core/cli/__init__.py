"""The ``modelforge`` command line: a package of small command modules, loaded lazily so that
``modelforge --help`` and the light commands never import torch.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import click

from .. import __version__
from ..errors import ModelForgeError

#: command name -> "module:function" inside this package; imported only when used.
COMMANDS: dict[str, str] = {
    "validate": "validate:validate",
    "schema": "schema_cmd:schema",
    "plugins": "plugins_cmd:plugins",
    "train": "train:train",
    "demo": "demo:demo",
    "doctor": "doctor:doctor",
    "plan": "plan:plan",
    "serve": "serve:serve",
    "generate": "generate:generate",
    "chat": "chat:chat",
    "evaluate": "evaluate:evaluate",
    "export": "export:export",
    "runs": "runs_cmd:runs",
}


class LazyGroup(click.Group):
    """A group whose built-in commands are imported on first use, and whose plugins'
    commands are added through the ``register_commands`` hook."""

    _plugins_added = False

    def _add_plugin_commands(self) -> None:
        if self._plugins_added:
            return
        self._plugins_added = True
        from ..plugins import get_plugins

        get_plugins().hooks.register_commands(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return sorted({*COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            module_name, attr = COMMANDS[cmd_name].split(":")
            module = importlib.import_module(f"{__name__}.{module_name}")
            command: click.Command = getattr(module, attr)
            return command
        self._add_plugin_commands()
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModelForgeError as exc:
            if (ctx.obj and ctx.obj.get("debug")) or os.environ.get("MODELFORGE_DEBUG"):
                raise
            report_error(exc)
            ctx.exit(exc.exit_code)


def report_error(exc: ModelForgeError) -> None:
    from ..errors import ValidationFailed
    from .output import print_problems

    if isinstance(exc, ValidationFailed):
        print_problems(exc, err=True)
    else:
        click.secho(f"error: {exc}", fg="red", err=True)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelforge")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of short error messages.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Fine-tune language models from one JSON (or YAML) training config.

    Start with `modelforge validate CONFIG`, then `modelforge train CONFIG`.
    """
    from ..quantization import quiet_kernel_notice

    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    quiet_kernel_notice()


def run() -> None:
    """Console-script entry point."""
    from .. import training

    training.EXIT_QUIETLY_AFTER_A_STOP = True
    try:
        main(prog_name="modelforge", obj={})
    finally:
        _quiet_interrupts_at_exit()


def _quiet_interrupts_at_exit() -> None:
    """Once the command is done, a Ctrl-C that lands while Python shuts down (waiting for a
    library's worker threads) ends the process with 130 and no traceback: the command's own
    handlers are gone by then, and Python's default would print ``KeyboardInterrupt`` from
    ``threading._shutdown``."""
    import contextlib
    import os
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def leave(signum: int, frame: object) -> None:
        os._exit(130)

    with contextlib.suppress(ValueError, OSError):  # not the main interpreter: nothing to do
        signal.signal(signal.SIGINT, leave)


if __name__ == "__main__":  # pragma: no cover
    run()
