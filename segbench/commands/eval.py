"""`segbench eval`: a trained run's checkpoint on a split (``segbench.engine.evaluate_run``)."""

from __future__ import annotations

import click

from segbench.commands.errors import user_errors
from segbench.commands.train import format_metrics

__all__ = ["evaluate"]


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--split", type=click.Choice(["val", "test", "train"]), default="val", show_default=True)
@click.option("--which", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Checkpoint to evaluate.")
@click.option("--set", "overrides", multiple=True, metavar="eval.KEY=VALUE",
              help="Evaluate differently, e.g. --set eval.mode=slide --set eval.window=[256,256].")
def evaluate(run_dir, split, which, overrides) -> None:
    """Evaluate a trained run on a split (writes RUN_DIR/eval_<split>.json)."""
    from segbench.engine import evaluate_run
    from segbench.engine.evaluate import EvaluationNotSaved

    with user_errors():
        try:
            metrics = evaluate_run(run_dir, split, which=which, overrides=overrides, progress=True)
        except EvaluationNotSaved as err:  # a read-only or full run folder: the figures, then why they were not saved
            click.echo(f"{split} ({which} checkpoint):\n" + format_metrics(err.result))
            raise click.ClickException(str(err)) from None
    click.echo(f"{split} ({which} checkpoint):\n" + format_metrics(metrics))
