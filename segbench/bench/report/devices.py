"""Which machines and device models the review's figures came from, and the warning when they differ.

Accuracy does not depend on where a run trained (CPU runs are bit-exact), but every timing and memory
figure does: a latency measured on one GPU model is not comparable with one measured on another. Each
run records its ``host`` and ``device_name`` (the GPU's or the CPU's model,
``segbench.bench.measure.cost.machine_info``) in its results row; the table's throughput comes from the
Speed section, measured in one process (``throughput_device``). Runs spread over a Ray cluster of
several device models therefore make a table whose cost columns mix devices, and the report says so
first.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["device_runs", "mixed_devices_warning", "arch_devices"]


def _run_name(row: dict) -> str:
    """``unet-s0`` / ``unet-f1-s0``: the run's folder without its hash."""
    if row.get("run_dir"):
        return Path(str(row["run_dir"])).name.rsplit("-", 1)[0]
    return f"{row['arch']} seed {row.get('seed')}"


def device_runs(rows: list[dict]) -> dict[str, dict[str, list[str]]]:
    """Device model -> host -> the successful runs whose timing and memory figures it produced."""
    found: dict[str, dict[str, list[str]]] = {}
    for row in rows:
        if row.get("status") == "ok":
            device = str(row.get("device_name") or "unknown device")
            found.setdefault(device, {}).setdefault(str(row.get("host") or "unknown host"), []).append(_run_name(row))
    return found


def arch_devices(rows: list[dict]) -> dict[str, str]:
    """Per row label (architecture), the device model(s) of its successful runs, ``; ``-joined."""
    models: dict[str, list[str]] = {}
    for row in rows:
        if row.get("status") == "ok" and row.get("device_name"):
            names = models.setdefault(row["arch"], [])
            if row["device_name"] not in names:
                names.append(row["device_name"])
    return {arch: "; ".join(names) for arch, names in models.items()}


def mixed_devices_warning(rows: list[dict]) -> str | None:
    """The warning for a table whose timing and memory figures came from more than one device model
    (the runs', and the Speed section's behind the throughput column), or None."""
    runs = device_runs(rows)
    speed = sorted({str(r["throughput_device"]) for r in rows if r.get("status") == "ok" and r.get("throughput_device")})
    models = set(runs) | set(speed)
    if len(models) <= 1:
        return None
    where = "; ".join(
        f"{device}: " + ", ".join(f"{', '.join(names)} on {host}" for host, names in hosts.items())
        for device, hosts in runs.items())
    text = (f"The timing and memory figures of this report come from {len(models)} device models, "
            f"and figures from different devices are not comparable (latency, throughput, memory, training time "
            f"and speed): {where}.")
    if speed:
        text += f" The Throughput column and the Speed section were measured on {', '.join(speed)}."
    return text + " Compare accuracy across them; compare costs only between runs of one device model, or run the " \
                  "review on one device model (a Ray cluster of one GPU model, or --launcher local)."
