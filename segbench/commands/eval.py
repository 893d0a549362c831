"""`segbench eval`: a trained run's checkpoint on a split (``segbench.engine.evaluate_run``), or an ensemble
of runs and flip TTA (``segbench.engine.ensemble``), optionally judged against its members alone with the
review's statistics (``segbench.bench.report.candidates``) and priced with the one timing harness
(``segbench.bench.measure.predictors``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from segbench.commands.errors import user_errors
from segbench.commands.train import format_metrics

__all__ = ["evaluate", "evaluate_exported"]

EXPORTED = ("onnx", "onnx-int8")  # --engine values that evaluate a file `segbench export` wrote


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False), metavar="RUN_DIR...")
@click.option("--split", type=click.Choice(["val", "test", "train"]), default="val", show_default=True)
@click.option("--which", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Checkpoint to evaluate.")
@click.option("--set", "overrides", multiple=True, metavar="eval.KEY=VALUE",
              help="Evaluate differently, e.g. --set eval.mode=slide --set eval.window=[256,256].")
@click.option("--tta", is_flag=True,
              help="Flip test-time augmentation: softmax probabilities averaged over every combination of the "
                   "flips (horizontal for 2D images; horizontal and vertical for slices of volumes; "
                   "--set eval.flips=[...] picks others).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Several RUN_DIRs, or --compare: write eval_<split>.json and eval_per_case_<split>.csv of the "
                   "ensemble or TTA (and candidates_<split>.json with --compare) into this folder; without it they "
                   "are only printed. One RUN_DIR without --out and --compare writes RUN_DIR/eval_<split>.json.")
@click.option("--compare", is_flag=True,
              help="Also evaluate each run alone (no TTA) on the same split, judge the ensemble/TTA against the "
                   "best of them with the review's statistics (simultaneous intervals on the same units) and "
                   "time them all with the review's harness (batch 1): Dice gained per added millisecond.")
@click.option("--margin", type=float, default=0.01, show_default=True,
              help="--compare: equivalence margin in Dice, as `segbench run --margin`.")
@click.option("--engine", type=click.Choice(["torch", *EXPORTED]), default="torch", show_default=True,
              help="onnx: RUN_DIR/model.onnx, onnx-int8: RUN_DIR/model.int8.onnx (`segbench export --quantize int8`), "
                   "run by ONNX Runtime on the CPU through the same evaluation loop (one run; written only with "
                   "--out). onnx-int8 --compare: judged against model.onnx on the same units and both timed "
                   "interleaved (latency ratio int8/fp32 with its interval).")
def evaluate(run_dirs, split, which, overrides, tta, out, compare, margin, engine) -> None:
    """Evaluate a trained run on a split (writes RUN_DIR/eval_<split>.json); several RUN_DIRs: their
    ensemble (softmax probabilities averaged; the runs must take the same input)."""
    with user_errors():
        if engine != "torch":
            lines = evaluate_exported([Path(d) for d in run_dirs], split, engine=engine, overrides=overrides, tta=tta,
                                      out=Path(out) if out else None, compare=compare, margin=margin)
            click.echo("\n".join(lines))
            return
        if len(run_dirs) == 1 and not compare and out is None:
            from segbench.engine import evaluate_run

            from segbench.engine.evaluate import EvaluationNotSaved

            try:
                metrics = evaluate_run(run_dirs[0], split, which=which, overrides=overrides, tta=tta, progress=True)
            except EvaluationNotSaved as err:  # a read-only or full run folder: the figures, then why not saved
                click.echo(f"{split} ({which} checkpoint):\n" + format_metrics(err.result))
                raise click.ClickException(str(err)) from None
            click.echo(f"{split} ({which} checkpoint{', flip TTA' if metrics['eval']['flips'] else ''}):\n"
                       + format_metrics(metrics))
            return
        lines = evaluate_candidates([Path(d) for d in run_dirs], split, which=which, overrides=overrides, tta=tta,
                                    out=Path(out) if out else None, compare=compare, margin=margin)
    click.echo("\n".join(lines))


def _predictors(members, tta: bool) -> dict[str, tuple]:
    """name -> (members, flips) of the predictors asked for: several runs' ensemble, with ``tta`` the flips
    too (then the ensemble without them as well, to compare)."""
    from segbench.engine.inference import tta_flips

    own = tuple(members.cfg.eval.flips)
    flips = (own or tta_flips(members.info.volumetric)) if tta else own
    name = f"ensemble of {len(members.models)}" if len(members.models) > 1 else members.names[0]
    out = {name: (members, ())} if len(members.models) > 1 and flips else {}
    out[name + (f" + TTA ({'+'.join(flips)})" if flips else "")] = (members, flips)
    return out


def evaluate_candidates(run_dirs: list[Path], split: str, *, which: str, overrides, tta: bool, out: Path | None,
                        compare: bool, margin: float) -> list[str]:
    """Evaluate the ensemble of ``run_dirs`` (and/or TTA) on ``split``; with ``compare`` also each run alone,
    judged and priced together. Returns the lines to print; writes into ``out`` when given."""
    from segbench.config import ConfigError, apply_overrides, config_from_dict, config_to_dict
    from segbench.data import load_data
    from segbench.engine.ensemble import evaluate_runs, load_members

    members = load_members(run_dirs, which)
    if overrides:
        wrong = [o for o in overrides if not o.strip().startswith("eval.")]
        if wrong:
            raise ConfigError(f"only eval.* settings can change after training, got {', '.join(wrong)}")
        members = members.with_eval(config_from_dict(apply_overrides(config_to_dict(members.cfg), list(overrides))).eval)
    data = load_data(members.cfg.data)
    results = {name: evaluate_runs(group, split, flips=flips, data=data, progress=True)
               for name, (group, flips) in _predictors(members, tta).items()}
    return _report(results, split, f"{which} checkpoints of {', '.join(members.names)}", out,
                   (lambda: _judge(members, results, split, data, margin)) if compare else None)


def _report(results: dict, split: str, source: str, out: Path | None, judge) -> list[str]:
    """The lines to print for evaluated ``results`` (each predictor's metrics, then ``judge()``'s comparison
    when given), with the files written into ``out`` when given."""
    lines = []
    for name, result in results.items():
        lines += [f"{name}: {split} ({source}; {result.record()['forward_passes_per_image']} forward passes per image)",
                  format_metrics(result.metrics)]
    judged = None
    if judge is not None:
        judged, judged_lines = judge()
        lines += judged_lines
    if out is not None:
        _write(out, split, results, judged)
        lines.append(f"wrote {out}")
    return lines


def _judge(members, results: dict, split: str, data, margin: float) -> tuple:
    from segbench.bench.measure.predictors import Candidate, price_candidates
    from segbench.bench.report.candidates import format_judged, judge, scores_of_rows
    from segbench.engine.device import inference_precision, resolve_device
    from segbench.engine.ensemble import evaluate_runs
    from segbench.engine.evaluate import inference_settings

    singles = {name: evaluate_runs(members.member(i), split, flips=(), data=data)
               for i, name in enumerate(members.names)}
    settings = inference_settings(members.cfg.eval)
    priced = {name: Candidate([members.models[i]], dataclasses.replace(settings, flips=()))
              for i, name in enumerate(members.names)}
    for name, result in results.items():
        priced[name] = Candidate(list(members.models), dataclasses.replace(settings, flips=result.flips))
    image = data.splits[split][0]["image"]
    device = resolve_device("auto")
    costs = price_candidates(priced, in_channels=image.shape[0], size=tuple(image.shape[-2:]), device=device,
                             precision=inference_precision(members.cfg.train.amp, device))
    judged = judge({n: scores_of_rows(r.per_case, r.per_slice) for n, r in singles.items()},
                   {n: scores_of_rows(r.per_case, r.per_slice) for n, r in results.items()}, costs, margin=margin)
    if judged is None:
        return None, ["no per-case scores: nothing to compare"]
    return (judged, costs), [f"against each run alone ({split}):", *format_judged(judged)]


def _with_eval(members, overrides):
    from segbench.config import ConfigError, apply_overrides, config_from_dict, config_to_dict

    if not overrides:
        return members
    wrong = [o for o in overrides if not o.strip().startswith("eval.")]
    if wrong:
        raise ConfigError(f"only eval.* settings can change after training, got {', '.join(wrong)}")
    return members.with_eval(config_from_dict(apply_overrides(config_to_dict(members.cfg), list(overrides))).eval)


def evaluate_exported(run_dirs: list[Path], split: str, *, engine: str, overrides, tta: bool, out: Path | None,
                      compare: bool, margin: float) -> list[str]:
    """Evaluate a run's exported file (``model.onnx`` or ``model.int8.onnx``) on ``split`` with the one evaluation loop; with
    ``compare`` (onnx-int8 only) also its fp32 source, the two judged on the same units with the review's
    statistics and timed in one interleaved measurement. Returns the lines to print; writes into ``out``."""
    from segbench import run_files
    from segbench.data import load_data
    from segbench.engine.ensemble import EnsembleError, evaluate_runs, load_exported

    if len(run_dirs) != 1:
        raise EnsembleError(f"--engine {engine} evaluates one run's exported file; {len(run_dirs)} run folders given "
                            "(evaluate an ensemble with --engine torch)")
    if compare and engine != "onnx-int8":
        raise click.UsageError("--compare with --engine onnx has nothing to compare with: the fp32 export reproduces "
                               "PyTorch (checked when exported); --engine onnx-int8 --compare judges the int8 model "
                               "against it, --engine torch --compare an ensemble or TTA against its runs")
    run_dir = run_dirs[0]
    files = {"fp32": run_files.ONNX_FILE, "int8": run_files.INT8_ONNX_FILE}
    wanted = ["fp32", "int8"] if compare else ["int8" if engine == "onnx-int8" else "fp32"]
    loaded = {}
    for kind in wanted:
        path = run_dir / files[kind]
        if not path.is_file():
            how = "--quantize int8" if kind == "int8" else "--format onnx"
            raise FileNotFoundError(f"no {files[kind]} in {run_dir}; write it with `segbench export {run_dir} {how}`")
        loaded[f"{kind} ({files[kind]})"] = _with_eval(load_exported(run_dir, path), overrides)
    first = next(iter(loaded.values()))
    data = load_data(first.cfg.data)
    results = {}
    for label, members in loaded.items():
        for name, (group, flips) in _predictors(members, tta).items():
            name = f"{label}{name[len(members.names[0]):]}"  # the run's name is every predictor's: say which file
            results[name] = evaluate_runs(group, split, flips=flips, data=data, progress=True)
    return _report(results, split, f"{run_dir.name}, ONNX Runtime", out,
                   (lambda: _judge_int8(loaded, results, split, data, margin)) if compare else None)


def _judge_int8(loaded: dict, results: dict, split: str, data, margin: float) -> tuple:
    """The int8 predictors against the fp32 one(s) (the 'singles'), on the same units, and both timed by the
    one harness: batch 1 at the split's image size, interleaved; the latency ratio int8/fp32 with its interval."""
    from segbench.bench.measure.predictors import price_exported
    from segbench.bench.measure.speed import paired_ratio
    from segbench.bench.report.candidates import format_judged, judge, scores_of_rows

    reference = next(name for name in results if name.startswith("fp32"))
    scores = {name: scores_of_rows(r.per_case, r.per_slice) for name, r in results.items()}
    image = data.splits[split][0]["image"]
    fp32_label, int8_label = list(loaded)
    costs, timings = price_exported({fp32_label: loaded[fp32_label].models[0], int8_label: loaded[int8_label].models[0]},
                                    in_channels=image.shape[0], size=tuple(image.shape[-2:]))
    judged = judge({reference: scores[reference]}, {n: s for n, s in scores.items() if n != reference},
                   {reference: costs[fp32_label], **{n: costs[int8_label] for n in results if n.startswith("int8")}},
                   margin=margin)
    ratio, interval = paired_ratio(timings[int8_label], timings[fp32_label])
    spread = f" [{interval[0]:.3f}–{interval[1]:.3f}]" if interval else " (no interval: too few paired rounds)"
    machine = costs[fp32_label]
    said = (f"latency int8/fp32 at batch 1, {image.shape[-2]}x{image.shape[-1]}: {ratio:.3f}{spread} (geometric mean "
            f"of the paired rounds' ratios, 95% bootstrap interval); medians {costs[int8_label]['latency_ms']:.2f} ms "
            f"vs {costs[fp32_label]['latency_ms']:.2f} ms; machine: {machine['machine_load']}")
    if judged is None:
        return None, ["no per-case scores: nothing to compare", said]
    price = {"ratio_int8_fp32": ratio, "ratio_interval": interval, "size": list(image.shape[-2:])}
    return (judged, {**costs, "latency_ratio": price}), [f"int8 against fp32 ({split}):", *format_judged(judged), said]


def _write(out: Path, split: str, results: dict, judged) -> None:
    from segbench.engine import run_folder
    from segbench.engine.metrics import write_per_case_csv
    from segbench.jsonio import write_json
    from segbench.run_files import eval_file, eval_per_case_file, writable

    (name, result), = list(results.items())[-1:]  # the last asked for: with TTA when asked
    names = [eval_file(split), eval_per_case_file(split)] + ([f"candidates_{split}.json"] if judged else [])
    for file in names:
        writable(out / file, managed=out)
    run_folder.claim_output(out, "ensemble")
    run_folder.record(out, *names)
    write_json({"name": name, **result.record()}, out / eval_file(split))
    write_per_case_csv(out / eval_per_case_file(split), result.per_case)
    if judged:
        rows, costs = judged
        write_json({"best_single": rows.best_single, "margin": rows.evidence.comparison.margin,
                    "n_units": rows.evidence.n_units, "unit": rows.evidence.unit,
                    "rows": [dataclasses.asdict(r) for r in rows.rows], "costs": costs}, out / f"candidates_{split}.json")
