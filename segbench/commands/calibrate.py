"""``segbench calibrate``: measure the verdict's error rates by simulation (segbench.bench.report.calibrate)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import click

from segbench.bench.report.calibrate import SCENARIOS, calibrate as run_calibration
from segbench.jsonio import write_json

KEYS = ("coverage", "familywise_error", "power", "wrong_best", "false_equivalence")


def _cell(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"


@click.command()
@click.option("--simulations", type=click.IntRange(min=10), default=2000, show_default=True,
              help="Simulations per scenario (each one a full comparison with 2,000 bootstrap resamples).")
@click.option("--scenario", "names", multiple=True, type=click.Choice([s.name for s in SCENARIOS]),
              help="Only these scenarios (repeatable; default: all).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the simulations: the same seed, the same table.")
@click.option("--out", type=click.Path(dir_okay=False), default="calibration.json", show_default=True,
              help="Where the numbers go: per scenario coverage, familywise_error, power, wrong_best.")
def calibrate(simulations, names, seed, out) -> None:
    """Simulate per-case scores with a known truth and run them through the review's statistics and verdict.

    Prints, per scenario, the coverage of the 95% intervals, the family-wise error (any false claim), the
    power to call a truly worse architecture worse, how often the verdict names a wrong best, and how
    often a false equivalence is claimed. A benchmark, not a test: all scenarios at 2,000 simulations take
    minutes.
    """
    results = {}
    header = f"{'scenario':<22} {'coverage':>9} {'FWER':>7} {'power':>7} {'wrong best':>11} {'false equiv':>12} {'s':>6}"
    click.echo(header)
    started = time.perf_counter()
    for scenario, outcome in run_calibration(simulations, seed, list(names) or None):
        figures = {key: getattr(outcome, key) for key in KEYS}
        results[scenario.name] = {"description": scenario.description, "simulations": outcome.simulations,
                                  **{k: (None if math.isnan(v) else v) for k, v in figures.items()}}
        click.echo(f"{scenario.name:<22} {_cell(outcome.coverage):>9} {_cell(outcome.familywise_error):>7} "
                   f"{_cell(outcome.power):>7} {_cell(outcome.wrong_best):>11} {_cell(outcome.false_equivalence):>12} "
                   f"{time.perf_counter() - started:6.0f}")
        started = time.perf_counter()
    write_json({"simulations": simulations, "seed": seed, "scenarios": results}, Path(out))
    click.echo(f"wrote {out}")
