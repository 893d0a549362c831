"""The report's figures, drawn with matplotlib's Agg backend (no display needed) and saved as PNG.

Each function takes plain data (the per-architecture table, curves, arrays) and a path, so the
figures can be redrawn from ``results.json`` without re-running anything.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from segbench.bench.report.columns import column  # noqa: E402
from segbench.bench.report.results import pareto_front  # noqa: E402
from segbench.run_files import writable  # noqa: E402

__all__ = ["pareto_scatter", "draw_budget", "training_curves", "class_heatmap", "prediction_grid", "class_colours", "intervals",
           "rank_distribution"]

_DPI = 110


def _ok(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(writable(path), dpi=_DPI)
    plt.close(fig)
    return path


def draw_budget(ax, budget: float, costs: list[float], unit: str) -> None:
    """A cost limit on accuracy-vs-cost axes: a dotted vertical line, the side beyond it shaded, and x limits
    that keep it in view even when every point lies on one side of it."""
    low, high = min(costs + [budget]), max(costs + [budget])
    ax.set_xlim(low / 1.3, high * 1.3)
    ax.axvline(budget, color="black", linestyle=":", linewidth=1.4, label=f"budget {budget:g}{' ' + unit if unit else ''}")
    ax.axvspan(budget, high * 1.3, color="0.85", alpha=0.5, zorder=0)


def pareto_scatter(table: list[dict], cost_key: str, accuracy_key: str, path: str | Path,
                   budget: float | None = None) -> Path:
    """Accuracy against a cost (log axis), one labelled point per architecture, error bars from the
    seeds, and the Pareto front (no other point is both cheaper and more accurate) as a step line;
    ``budget``: a limit on the cost (``segbench run --latency-budget`` ...), drawn as a vertical line with
    the side beyond it shaded."""
    cost_col, acc_col = column(cost_key), column(accuracy_key)
    rows = [r for r in table if _ok(r.get(cost_key)) and _ok(r.get(accuracy_key))]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if not rows:
        ax.text(0.5, 0.5, "no architecture has both numbers", ha="center", va="center", transform=ax.transAxes)
        return _save(fig, path)
    costs = [r[cost_key] for r in rows]
    scores = [r[accuracy_key] for r in rows]
    front = pareto_front(costs, scores)
    for i, r in enumerate(rows):
        marker = "s" if r.get("recipe") == "transformer" else "o"
        ax.errorbar(
            costs[i], scores[i], yerr=r.get(f"{accuracy_key}_std") or 0.0, fmt=marker, capsize=3,
            color="tab:red" if i in front else "tab:blue", markersize=7,
        )
        # Alternate label sides so neighbours with similar numbers stay readable.
        offset = (5, 4) if i % 2 == 0 else (5, -11)
        ax.annotate(r["arch"], (costs[i], scores[i]), textcoords="offset points", xytext=offset, fontsize=8)
    if len(front) > 1:
        xs, ys = [], []
        for k, i in enumerate(front):
            if k:
                xs.append(costs[i])
                ys.append(scores[front[k - 1]])  # step: the best score seen so far, until this point
            xs.append(costs[i])
            ys.append(scores[i])
        ax.plot(xs, ys, "--", color="tab:red", linewidth=1.2, label="Pareto front")
    if budget is not None:
        draw_budget(ax, budget, costs, cost_col.unit)
    if len(front) > 1 or budget is not None:
        ax.legend(loc="best", fontsize=8)
    costs = costs + ([budget] if budget is not None else [])
    if all(c > 0 for c in costs) and max(costs) / min(costs) > 10:
        ax.set_xscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        ax.xaxis.set_major_formatter(plain)
        if max(costs) / min(costs) < 100:  # within two decades the minor ticks need numbers too
            ax.xaxis.set_minor_formatter(plain)
            ax.tick_params(axis="x", which="minor", labelsize=7)
    unit = f" ({cost_col.unit})" if cost_col.unit else ""
    ax.set_xlabel(f"{cost_col.label}{unit} - {cost_col.better} is better")
    ax.set_ylabel(acc_col.label)
    ax.set_title(f"{acc_col.label} vs {cost_col.label} (circles: CNNs, squares: transformers)", fontsize=10)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def training_curves(curves: dict[str, dict[str, list[tuple[float, float]]]], metric_label: str, path: str | Path) -> Path:
    """Two panels: training loss per iteration and the validation metric per validation, one line per
    architecture. ``curves[arch] = {"loss": [(iter, value), ...], "val": [(iter, value), ...]}`` and,
    when known, ``"gain"``: the iteration of the last real improvement (a ring on the validation curve) and
    ``"converged"``: whether the run had stopped improving (its last point a filled square) or was cut by
    its budget while still improving (an open triangle)."""
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    for k, (arch, curve) in enumerate(curves.items()):
        colour = cmap(k % cmap.N)
        loss = curve.get("loss") or []
        if loss:
            its, values = zip(*loss)
            values = np.asarray(values, dtype=float)
            # A moving average makes the trend readable; the raw loss is drawn faintly underneath.
            window = max(1, len(values) // 50)
            smooth = np.convolve(values, np.ones(window) / window, mode="valid") if window > 1 else values
            ax_loss.plot(its, values, color=colour, alpha=0.2, linewidth=0.6)
            ax_loss.plot(its[window - 1 :], smooth, color=colour, linewidth=1.3, label=arch)
        val = curve.get("val") or []
        if val:
            its, values = zip(*val)
            ax_val.plot(its, values, "-o", color=colour, markersize=3, linewidth=1.3, label=arch)
            gain = dict(val).get(curve.get("gain"))
            if gain is not None:
                ax_val.plot(curve["gain"], gain, "o", markersize=9, markerfacecolor="none", color=colour)
            if curve.get("converged") is not None:
                ax_val.plot(its[-1], values[-1], "s" if curve["converged"] else "^", markersize=7, color=colour,
                            markerfacecolor=colour if curve["converged"] else "none")
    ax_loss.set(xlabel="iteration", ylabel="training loss", title="Training loss")
    ax_val.set(xlabel="iteration", ylabel=metric_label, title=f"Validation {metric_label}")
    losses = [v for c in curves.values() for _, v in (c.get("loss") or [])]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:
        ax_loss.set_yscale("log")  # losses spanning decades: the late differences stay visible
    for ax in (ax_loss, ax_val):
        ax.grid(True, alpha=0.3)
    handles, labels = ax_loss.get_legend_handles_labels()
    if not handles:
        handles, labels = ax_val.get_legend_handles_labels()
    if handles:
        ax_val.legend(handles, labels, fontsize=7, loc="lower right", ncol=2)
    return _save(fig, path)


def class_heatmap(table: list[dict], class_keys: list[str], class_names: list[str], path: str | Path) -> Path:
    """Architectures x classes, cell = that class's score (mean over seeds), value printed in it."""
    archs = [r["arch"] for r in table]
    data = np.array(
        [[r.get(k) if _ok(r.get(k)) else np.nan for k in class_keys] for r in table], dtype=float
    ).reshape(len(archs), len(class_keys))
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * max(len(class_keys), 2), 1.0 + 0.38 * max(len(archs), 2)))
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(archs)), archs, fontsize=8)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            text = "–" if np.isnan(data[i, j]) else f"{data[i, j]:.2f}"
            shade = "black" if not np.isnan(data[i, j]) and data[i, j] > 0.6 else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=shade)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title("Per-class score", fontsize=10)
    return _save(fig, path)


def class_colours(num_classes: int) -> np.ndarray:
    """RGB in [0, 1] per class; class 0 (background) is transparent in overlays."""
    cmap = plt.get_cmap("tab10" if num_classes <= 11 else "tab20")
    return np.array([cmap((c - 1) % cmap.N)[:3] for c in range(num_classes)])


def _display_image(image: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) array, any range -> (H, W, 3) in [0, 1] (first channel if not 1 or 3)."""
    image = np.asarray(image, dtype=float)
    if image.ndim == 3:
        image = image[:3] if image.shape[0] >= 3 else image[:1]
        image = np.moveaxis(image, 0, -1)
    else:
        image = image[..., None]
    lo, hi = np.percentile(image, 1), np.percentile(image, 99)
    image = np.clip((image - lo) / (hi - lo + 1e-8), 0, 1)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def _overlay(base: np.ndarray, mask: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    out = base.copy()
    mask = np.asarray(mask)
    for c in range(1, len(colours)):
        where = mask == c
        out[where] = (1 - alpha) * out[where] + alpha * colours[c]
    return out


def prediction_grid(
    images: list[np.ndarray],
    truths: list[np.ndarray],
    predictions: dict[str, list[np.ndarray]],
    class_names: list[str],
    path: str | Path,
) -> Path:
    """Rows: the same validation images; columns: image | ground truth | each architecture's
    prediction, as coloured overlays on the image (background left uncoloured)."""
    colours = class_colours(len(class_names))
    columns = ["image", "ground truth", *predictions]
    rows = len(images)
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.7 * rows + 0.4), squeeze=False)
    for i in range(rows):
        base = _display_image(images[i])
        panels = [base, _overlay(base, truths[i], colours)]
        panels += [_overlay(base, predictions[arch][i], colours) for arch in predictions]
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=8)
    handles = [Patch(color=colours[c], label=class_names[c]) for c in range(1, len(class_names))]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
        fig.subplots_adjust(bottom=0.08)
    return _save(fig, path)


def intervals(means: dict[str, tuple[float, float, float]], top: set[str], label: str, path: str | Path) -> Path:
    """Each architecture's mean with its 95% interval (error bars), best at the top; the top group's
    members (not separable from the best) in red."""
    names = sorted(means, key=lambda a: -means[a][0] if _ok(means[a][0]) else math.inf)
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.38 * max(len(names), 2)))
    for i, name in enumerate(names):
        mean, low, high = means[name]
        if not _ok(mean):
            continue
        err = [[mean - low], [high - mean]] if _ok(low) and _ok(high) else None
        ax.errorbar(mean, i, xerr=err, fmt="o", capsize=3, color="tab:red" if name in top else "tab:blue")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(label)
    ax.legend(handles=[Patch(color="tab:red", label="top group"), Patch(color="tab:blue", label="worse than the best")],
              fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def rank_distribution(rank_counts: dict[str, dict[float, int]], observed: dict[str, float], path: str | Path) -> Path:
    """How often each architecture took each rank over the bootstrap resamples (challengeR's blob plot as a
    heat map): rows in the observed order, columns rank 1 (best) to n, cells the share of resamples."""
    names = sorted(observed, key=observed.get)
    n = len(names)
    total = max(sum(rank_counts[names[0]].values()), 1)
    grid = np.zeros((n, n))
    for i, name in enumerate(names):
        for rank, count in rank_counts[name].items():  # a tied (averaged) rank is split between its neighbours
            low = int(math.floor(rank)) - 1
            frac = rank - math.floor(rank)
            grid[i, min(low, n - 1)] += count * (1 - frac)
            if frac:
                grid[i, min(low + 1, n - 1)] += count * frac
    grid /= total
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * max(n, 2), 0.9 + 0.38 * max(n, 2)))
    image = ax.imshow(grid, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i in range(n):
        for j in range(n):
            if grid[i, j] >= 0.005:
                ax.text(j, i, f"{grid[i, j]:.0%}", ha="center", va="center", fontsize=7,
                        color="white" if grid[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), [str(k + 1) for k in range(n)])
    ax.set_yticks(range(n), names)
    ax.set_xlabel("rank over bootstrap resamples (1 = best)")
    fig.colorbar(image, ax=ax, fraction=0.04, format=FuncFormatter(lambda v, _: f"{v:.0%}"))
    return _save(fig, path)
