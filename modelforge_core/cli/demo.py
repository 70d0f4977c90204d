"""``modelforge demo``: train a tiny model offline and show what changed."""

from __future__ import annotations

from pathlib import Path

import click

from .output import dump_json


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("modelforge-demo"),
              show_default=True, help="Folder for the base model, data, config and runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def demo(out: Path, as_json: bool) -> None:
    """Fine-tune a tiny local model on a bundled dataset and compare before and after.

    Everything is built on this machine: no download. Takes about a minute on a laptop CPU.
    """
    from ..demo import run_demo
    from ..training import Display

    result = run_demo(out, display=Display(enabled=not as_json))
    if as_json:
        dump_json(result.to_json())
        return
    click.secho("\nbefore -> after training", bold=True)
    ratio = result.eval_loss_after / result.eval_loss_before
    click.echo(f"  eval loss  {result.eval_loss_before:.3f} -> {result.eval_loss_after:.3f}"
               f"  ({(1 - ratio) * 100:.0f}% lower)")
    for answer in result.answers:
        mark = click.style("correct", fg="green") if answer["correct"] else click.style("wrong", fg="red")
        click.echo(f"\n  Q: {answer['prompt']}")
        click.echo(f"     base model : {answer['before']!r}")
        click.echo(f"     fine-tuned : {answer['after']!r}  ({mark})")
    click.echo(f"\n{result.correct}/{len(result.answers)} held-out questions answered correctly; "
               f"run folder: {result.run_dir}")
    click.echo(f"try: modelforge generate {result.run_dir} --prompt 'What is the harbour of Marrak?'")
