"""How many CPU threads a run computes with: never more than the CPUs it was given.

PyTorch sizes its intra-op thread pool from the machine's cores, not from what this process may use.
Under ``taskset``, a container's CPU set or quota (``docker --cpus``), or beside other runs, the surplus
threads spin against each other and the neighbours: every operator waits for its slowest thread (a
U-Net at the quick settings ran at 3-5 img/s with the cores busy, 67 img/s quiet). ``cap_threads`` sets
the pool to the run's allotment (``cpu_allotment``): ``SEGBENCH_THREADS`` where set, else the CPUs of
the affinity mask and the cgroup quota, whichever is fewer; it only ever lowers the count (an
``OMP_NUM_THREADS`` or a Ray task's CPUs already lower still win).

The count is fixed per run, not adapted to the load while it runs: CPU results are bit-exact at the same
thread count, and a count that followed the neighbours would not be. A time budget's plan chooses it once
per sweep from the load at the time (``segbench.bench.protocol.matched.plan_threads``) and pins it with
``SEGBENCH_THREADS``; to leave cores to known neighbours otherwise, give the sweep fewer
(``SEGBENCH_THREADS=1 segbench run ...``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping

import torch

__all__ = ["THREADS_ENV", "cpu_allotment", "cap_threads"]

THREADS_ENV = "SEGBENCH_THREADS"


def _cgroup_quota(root: Path) -> int | None:
    """CPUs' worth of the cgroup's CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), rounded up; None: none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        return None


def cpu_allotment(environ: Mapping[str, str] = os.environ, affinity: set[int] | None = None,
                  cgroup: Path = Path("/sys/fs/cgroup")) -> tuple[int, str]:
    """The CPUs this process may compute on, and where the figure comes from."""
    given = environ.get(THREADS_ENV, "").strip()
    if given:
        try:
            count = int(given)
        except ValueError:
            raise ValueError(f"{THREADS_ENV}={given!r}: expected a positive number of threads") from None
        if count < 1:
            raise ValueError(f"{THREADS_ENV}={given!r}: expected a positive number of threads")
        return count, THREADS_ENV
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    count, source = len(affinity), "the CPUs this process may run on"
    quota = _cgroup_quota(cgroup)
    if quota is not None and quota < count:
        count, source = quota, "the container's CPU quota"
    return count, source


def cap_threads(environ: Mapping[str, str] = os.environ) -> tuple[int, str]:
    """Lower torch's intra-op threads to the allotment; returns the count used and why."""
    allotment, source = cpu_allotment(environ)
    current = torch.get_num_threads()
    if allotment < current:
        torch.set_num_threads(allotment)
        return allotment, f"{source} ({allotment}, below torch's default {current})"
    return current, f"torch's default, within {source} ({allotment})"
