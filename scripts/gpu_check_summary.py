"""The tail of ``scripts/gpu_check.sh``'s check.log: what the check measured, from the files its steps wrote.

    python scripts/gpu_check_summary.py OUT_DIR

Reads ``steps.tsv`` (each step's outcome and seconds), ``environment.json`` (the card), each review run's
``metrics.json``, the headline line ``segbench eval`` printed, the table ``segbench speed`` printed, and the
DDP run's ``metrics.json``; whatever a failed run left out is said to be missing. The figures are the
producers' own (their files and printed lines), only laid out here. Standard library only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _steps(out: Path) -> tuple[list[str], str]:
    path = out / "steps.tsv"
    rows = [line.split("\t") for line in path.read_text().splitlines() if line] if path.is_file() else []
    failed = [name for name, status, _ in rows if status == "FAILED"]
    total = sum(int(seconds) for _, _, seconds in rows)
    lines = ["steps: " + " | ".join(f"{name} {status} {seconds} s" for name, status, seconds in rows)
             + f" (total {total // 60} min {total % 60} s)"]
    return lines, f"FAILED at {failed[0]}" if failed else ("PASSED" if rows else "no step finished")


def _device(out: Path) -> list[str]:
    path = out / "environment.json"
    if not path.is_file():
        return ["device: not recorded"]
    env = json.loads(path.read_text())
    cards = ", ".join(f"{gpu['name']} (capability {gpu['capability']})" for gpu in env["gpus"]) or "no GPU"
    return [f"device: {len(env['gpus'])} x {cards}; torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, "
            f"Python {env['python']}"]


def _review(out: Path) -> list[str]:
    runs = sorted((out / "review").glob("*/metrics.json"))
    lines = ["review (its training worker killed after the first checkpoint, then the same command):"]
    for path in runs:
        m = json.loads(path.read_text())
        resumed = f"resumed at iteration {m['resumed_from']}" if m.get("resumed_from") else "not resumed"
        lines.append(f"  {m['arch']:<15} {m['device']} {m['precision']:<5} {resumed:<24} best {m['best_metric']} "
                     f"{_number(m['best_value'], '.4f')} (iteration {m['best_iteration']})  "
                     f"train {_number(m['train_images_per_s'], '.0f')} img/s")
        log = out / f"eval-{path.parent.name}.log"
        text = log.read_text().splitlines() if log.is_file() else []
        heading = next((i for i, line in enumerate(text) if line.startswith("val (best checkpoint)")), None)
        if heading is not None and heading + 1 < len(text):
            lines.append(f"    eval val, best checkpoint: {text[heading + 1].strip()}")
    return lines if runs else ["review: no finished run"]


def _speed(out: Path) -> list[str]:
    log = out / "speed.log"
    text = log.read_text().splitlines() if log.is_file() else []
    start = next((i for i, line in enumerate(text) if line.startswith("arch") and "precision" in line), None)
    if start is None:
        return ["speed: no table"]
    end = next((i for i in range(start, len(text)) if not text[i].strip()), len(text))
    matmul = [line for line in text[end:] if " matmul " in line]
    return ["speed (segbench speed --profile quick, batch 8; ms: median ± half the interquartile range):"] + [
        f"  {line}" for line in text[start:end] + matmul]


def _ddp(out: Path) -> list[str]:
    path = out / "runs" / "ddp" / "metrics.json"
    if not path.is_file():
        return []
    m = json.loads(path.read_text())
    return [f"ddp: world size {m['world_size']}, {m['precision']}, best {m['best_metric']} {_number(m['best_value'], '.4f')}, "
            f"train {_number(m['train_images_per_s'], '.0f')} img/s"]


def summary(out: Path) -> str:
    steps, result = _steps(out)
    lines = [f"== summary of {out} ({time.strftime('%Y-%m-%d %H:%M')})", *_device(out), *steps, *_review(out),
             *_speed(out), *_ddp(out), f"result: {result}"]
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n" + summary(Path(sys.argv[1])))
