"""``modelforge evaluate``: a trained run's metrics on its eval split or on another dataset."""

from __future__ import annotations

from pathlib import Path

import click

from .output import dump_json


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dataset", type=click.Path(dir_okay=False, path_type=Path),
              help="Evaluate on every row of this JSONL file instead of the run's eval split.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def evaluate(run_dir: Path, dataset: Path | None, as_json: bool) -> None:
    """Measure a trained run: eval loss and perplexity, plus the task's metrics (ROUGE for
    summarization, exact match and F1 for question answering).

    Without --dataset, the run's own eval split is rebuilt with its seed (the dataset must be
    unchanged since training). The result is saved in RUN_DIR/evaluations/.
    """
    from ..evaluation import evaluate_run
    from ..training import Display

    if not as_json:
        Display().message(f"evaluating {run_dir} ...")
    result = evaluate_run(run_dir, dataset=dataset)
    if as_json:
        dump_json(result.to_json())
        return
    source = "eval split of" if result.dataset["split"] == "eval" else "all rows of"
    click.secho(f"{source} {result.dataset['file']} ({result.dataset['rows']} rows)", bold=True)
    for key, value in result.metrics.items():
        trained = result.training_metrics.get(key)
        after = f"   (end of training: {trained:.4g})" if isinstance(trained, (int, float)) else ""
        click.echo(f"  {key:<28} {value:>10.4g}{after}")
    click.echo(f"saved: {result.file}")
