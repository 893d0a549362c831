"""Whether the machine was busy while segbench measured: how much CPU time other processes took during a
measurement, and the load average.

A time taken while other processes run is theirs as much as ours: torch's intra-op threads wait for the
slowest of them at every operator, so one core taken by a neighbour can slow a model several times
(a U-Net at the quick settings ran at 3-5 img/s with the cores busy, against 67 img/s quiet). The
harness cannot undo that; it can say so. :func:`watch_load` reads the CPUs' busy time
(``/proc/stat``) and this process's own (``os.times``) before and after the body: the difference is
what other processes used, in CPUs' worth (1.0: one core the whole time). The 1-minute load average
is recorded too, and is the only figure where ``/proc/stat`` is missing (it then counts our own
threads as well, so only a load above the CPU count minus one says "busy").
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

__all__ = ["CpuTimes", "MachineLoad", "BUSY_CPUS", "LoadWatch", "cpu_times", "machine_load", "watch_load",
           "spare_threads", "sample_load"]

BUSY_CPUS = 0.5  # busy: other processes used at least half a CPU during the measurement


@dataclass(frozen=True)
class CpuTimes:
    """Seconds since boot, all CPUs together (``busy``, ``total``), and this process's CPU seconds."""

    busy: float
    total: float
    own: float


def cpu_times() -> CpuTimes | None:
    """Now, or None where ``/proc/stat`` cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = sum(fields[3:5])  # idle, iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    own = os.times()
    return CpuTimes((total - idle) / tick, total / tick, own.user + own.system)


@dataclass(frozen=True)
class MachineLoad:
    cpus: int
    load_1min: float | None
    other_cpus: float | None  # CPUs' worth of time other processes used during the measurement

    @property
    def busy(self) -> bool:
        if self.other_cpus is not None:
            return self.other_cpus >= BUSY_CPUS
        return self.load_1min is not None and self.load_1min > self.cpus - 1

    def describe(self) -> str:
        """One line for the log: 'machine busy: ...' or 'machine quiet: ...'."""
        parts = [f"load average {self.load_1min:.1f} on {self.cpus} CPUs" if self.load_1min is not None
                 else f"{self.cpus} CPUs"]
        if self.other_cpus is not None:
            parts.append(f"other processes used {self.other_cpus:.1f} CPUs")
        return f"machine {'busy' if self.busy else 'quiet'}: {', '.join(parts)} during the measurement"

    def record(self, prefix: str = "machine_") -> dict:
        """Flat figures for a measurement's record."""
        return {f"{prefix}busy": self.busy, f"{prefix}load_1min": self.load_1min,
                f"{prefix}other_cpus": self.other_cpus, f"{prefix}cpus": self.cpus, f"{prefix}load": self.describe()}


def machine_load(before: CpuTimes | None, after: CpuTimes | None, cpus: int | None = None,
                 load_1min: float | None = None) -> MachineLoad:
    """The load between two readings: what the CPUs were busy with, less this process's own time."""
    cpus = cpus or os.cpu_count() or 1
    if load_1min is None and hasattr(os, "getloadavg"):
        load_1min = os.getloadavg()[0]
    other = None
    if before is not None and after is not None and after.total > before.total:
        others_s = (after.busy - before.busy) - (after.own - before.own)
        other = max(others_s, 0.0) / (after.total - before.total) * cpus
    return MachineLoad(cpus, load_1min, other)


@dataclass
class LoadWatch:
    """Filled in by :func:`watch_load` once the body has run."""

    load: MachineLoad | None = None


@contextmanager
def watch_load() -> Iterator[LoadWatch]:
    """The machine's load during the body (see the module docstring)."""
    watch = LoadWatch()
    before = cpu_times()
    yield watch
    watch.load = machine_load(before, cpu_times())


def sample_load(seconds: float = 1.0) -> MachineLoad:
    """The machine's load over the next ``seconds`` (this process idle meanwhile)."""
    import time

    before = cpu_times()
    time.sleep(seconds)
    return machine_load(before, cpu_times())


def spare_threads(threads: int, load: MachineLoad) -> int:
    """Of ``threads``, those that do not contend with the other processes' work (at least 1): on a busy
    machine, one fewer per CPU the others use (rounded). Threads that must wait for each other beside busy
    cores stall at every operator: measured on 2 busy cores (other processes using 1.7 CPUs), a U-Net
    step at the quick settings took 4.7 s at 2 threads and 0.47 s at 1."""
    if not load.busy or load.other_cpus is None:
        return threads
    return max(1, min(threads, load.cpus - round(load.other_cpus)))

