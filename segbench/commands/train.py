"""`segbench train`: a thin click wrapper over ``segbench.engine.train``; ``format_metrics`` also serves `eval`.

User errors (bad config keys, bad data, unknown architectures, missing runs) print one line and
exit with status 1; only bugs show a traceback.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click
from segbench.metric_defs import HEADLINE, metric
from segbench.run_files import BEST_FILE, CONFIG_FILE, LAST_FILE, LOG_FILE, METRICS_FILE

__all__ = ["train", "format_metrics"]


def _user_errors():
    """One line for a user's error (``segbench.commands.errors``); kept for callers of this module."""
    from segbench.commands.errors import user_errors

    return user_errors()


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_metrics(metrics: dict) -> str:
    """A readable block: the headline figures, then a per-class table."""
    lines = []
    shown = ("aAcc", "mIoU", "mIoU_fg", "mDice", "mDice_fg", HEADLINE, "hd95_fg", "nsd_fg")
    unit = {key: f" {metrics.get('distance_unit', 'px')}" for key in shown if metric(key).unit == "distance"}
    lines.append("  ".join(f"{key} {_fmt(metrics.get(key))}{unit.get(key, '')}" for key in shown if key in metrics))
    per_class = metrics.get("per_class") or {}
    if per_class:
        names = list(per_class["IoU"])
        width = max(12, *(len(n) for n in names))
        columns = ["IoU", "Dice", "Precision", "Recall"]
        extra = [("dice/case", metrics.get("dice_per_case", {})), ("hd95/case", metrics.get("hd95_per_case", {})),
                 ("nsd/case", metrics.get("nsd_per_case", {}))]
        header = f"  {'class':<{width}} " + " ".join(f"{c:>9}" for c in columns + [e[0] for e in extra if e[1]])
        lines += [header, "  " + "-" * (len(header) - 2)]
        for name in names:
            cells = [_fmt(per_class[c][name]) for c in columns]
            cells += [_fmt(table.get(name)) if name in table else "-" for _, table in extra if table]
            lines.append(f"  {name:<{width}} " + " ".join(f"{cell:>9}" for cell in cells))
    lines.append("  (n/a: undefined, e.g. a class absent from both prediction and truth; left out of the means)")
    return "\n".join(lines)


@click.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--arch", help="Architecture (see `segbench models`); replaces the preset's model.arch.")
@click.option("--data", "data_source", metavar="NAME_OR_PATH", help="Built-in dataset name or a data folder.")
@click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.lr=0.01 --set model.options.base_width=16.")
@click.option("--overwrite", is_flag=True,
              help="Start the run in --out over, deleting only the files a segbench run wrote there "
              "(listed in its segbench_run.json). Without it an existing run resumes.")
@click.option("--resume/--no-resume", default=True, hidden=True,
              help="--no-resume: the same as --overwrite (kept for old scripts).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--tracker", "trackers", multiple=True, metavar="none|tensorboard|mlflow",
              help="Also log to TensorBoard (RUN/tensorboard) and/or MLflow (repeatable or comma-separated; "
              "replaces train.trackers; pip install 'segbench[tensorboard]' / 'segbench[mlflow]'). See docs/tracking.md.")
@click.option("--tracking-uri", metavar="URI",
              help="MLflow tracking URI (http://HOST:PORT, sqlite:///PATH, ...); default sqlite:///RUN/mlflow.db.")
def train(config, arch, data_source, out, overrides, overwrite, resume, quiet, trackers, tracking_uri) -> None:
    """Train a model; CONFIG is an optional preset YAML (see configs/).

    --out must be a new or empty folder, or a segbench run: that run resumes (or starts over with
    --overwrite). A folder holding other files is refused; segbench deletes only what it wrote.
    Without CONFIG, --arch, --data or --set, an existing run in --out resumes (or starts over) with its
    saved config.
    """
    from segbench.config import apply_overrides, config_from_dict, load_config, read_preset
    from segbench.engine import train as train_run
    from segbench.engine.run_folder import is_run_folder

    out_dir = Path(out)
    resume = resume and not overwrite
    with _user_errors():
        if not (config or arch or data_source or overrides) and (out_dir / CONFIG_FILE).is_file() \
                and is_run_folder(out_dir):
            # --overwrite too: starting over a run means its configuration, never the defaults.
            cfg = load_config(out_dir / CONFIG_FILE)
            click.echo(f"{'resuming' if resume else 'starting over'} with {out_dir / CONFIG_FILE}", err=True)
        else:
            values = read_preset(config) if config else {}
            preset_model = values.get("model") or {}
            if arch and preset_model.get("arch") not in (None, arch) and preset_model.get("options"):
                # The preset's options belong to its architecture; another architecture gets its defaults.
                click.echo(f"note: preset options {preset_model['options']} are for {preset_model['arch']}; "
                           f"{arch} uses its own defaults (add --set model.options.NAME=VALUE)", err=True)
                values["model"] = {k: v for k, v in preset_model.items() if k != "options"}
            extra = ([f"model.arch={arch}"] if arch else []) + ([f"data.source={data_source}"] if data_source else [])
            cfg = config_from_dict(apply_overrides(values, extra + list(overrides)))
        cfg = _with_tracking(_resolved_data_path(cfg), trackers, tracking_uri)
        _check_option_types(cfg.model.arch, cfg.model.options)
        try:
            metrics = train_run(cfg, out_dir, resume=resume, progress=not quiet)
        except KeyboardInterrupt:
            _interrupted(out_dir)
    click.echo(f"\n{metrics['arch']} on {metrics['data']}: best {metrics['best_metric']} "
               f"{_fmt(metrics['best_value'])} at iteration {metrics['best_iteration']} of {metrics['iterations']}; "
               f"{metrics['train_time_s']:.0f} s training, {metrics['train_images_per_s']:.1f} images/s "
               f"({metrics['device']}, {metrics['precision']})")
    if metrics["val"]:
        click.echo("val (best checkpoint):\n" + format_metrics(metrics["val"]))
    else:
        click.echo(f"no validation gave a defined {metrics['best_metric']}; see log.jsonl")
    if "test" in metrics:
        click.echo("test (best checkpoint):\n" + format_metrics(metrics["test"]))
    written = [name for name in (METRICS_FILE, LOG_FILE, BEST_FILE, LAST_FILE, CONFIG_FILE) if (out_dir / name).is_file()]
    click.echo(f"run folder: {out_dir} ({', '.join(written)})")
    if not (out_dir / BEST_FILE).is_file():
        click.echo(f"warning: no best.pt: no validation gave a defined {metrics['best_metric']} (does the val split "
                   "hold foreground?); `segbench eval/predict --which last` use the final weights", err=True)


def _check_option_types(arch: str, options: dict) -> None:
    """A text value for a numeric model option fails deep inside a layer constructor; name the key instead."""
    from segbench.config import ConfigError
    from segbench.models.registry import model_options

    try:
        defaults = model_options(arch)
    except KeyError:
        return  # build_model names the valid architectures
    for name, value in options.items():
        default = defaults.get(name)
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        if numeric and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise ConfigError(f"model.options.{name}: expected a number (default {default!r}), got {value!r}")
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"model.options.{name}: expected true or false, got {value!r}")


def parse_trackers(values: tuple[str, ...]) -> tuple[str, ...] | None:
    """``--tracker`` values (repeated, comma-separated) as ``train.trackers``; None when not given, () for none."""
    from segbench.config import ConfigError
    from segbench.engine.tracking import TRACKERS

    if not values:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in (*TRACKERS, "none")]
    if unknown:
        raise ConfigError(f"--tracker {unknown[0]!r}: valid: none, {', '.join(TRACKERS)}")
    return tuple(dict.fromkeys(name for name in names if name != "none"))


def _with_tracking(cfg, trackers: tuple[str, ...], tracking_uri: str | None):
    """The config with ``--tracker``/``--tracking-uri`` applied; every tracker's package checked now, so a
    missing one is a one-line error before any work."""
    import dataclasses

    from segbench.engine.tracking import check_available

    chosen = parse_trackers(trackers)
    t = cfg.train
    t = dataclasses.replace(t, trackers=t.trackers if chosen is None else chosen,
                            tracking_uri=tracking_uri if tracking_uri is not None else t.tracking_uri)
    check_available(t.trackers, t.tracking_uri)
    return dataclasses.replace(cfg, train=t)


def _resolved_data_path(cfg):
    """The config with a data folder stored as an absolute path, so `segbench eval` works from anywhere."""
    import dataclasses

    source = Path(cfg.data.source).expanduser()
    if not source.is_dir():
        return cfg  # a built-in dataset name
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=str(source.resolve())))


def _interrupted(out_dir: Path) -> None:
    """Ctrl-C: say what survived and how to continue, instead of click's bare "Aborted!"."""
    from segbench.engine.checkpoint import load_checkpoint

    try:
        iteration = load_checkpoint(out_dir / LAST_FILE).get("iteration")
        kept = f"{out_dir / 'last.pt'} holds iteration {iteration}"
    except (OSError, ValueError):
        kept = "no checkpoint was written yet"
    click.echo(f"\ninterrupted: {kept}; run the same command again to resume (add --overwrite to start over)",
               err=True)
    sys.exit(130)
