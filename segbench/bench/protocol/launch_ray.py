"""``segbench run --launcher ray``: the sweep's runs as Ray tasks, on every GPU of a machine or a cluster.

Only where and when runs execute changes. Each planned run that is not finished is one Ray task asking
for its resources (``--gpus-per-run``, ``--cpus-per-run``); the task starts the run's worker exactly as
the local sweep does (``worker.run_worker_process``: a fresh process per run, under ``torchrun`` when a run
has several GPUs), on whichever node Ray gives it. Planning, folders, hashes, resuming, the failed-run
records and the report are the sweep's (``sweep.SweepState``), so they do not depend on the launcher.

- **Shared storage.** Run folders live under ``--out``, written by the workers and read by the driver:
  before any run, a task on every node that can hold one reads a marker the driver wrote there and
  writes one the driver reads back (``check_shared_storage``); any node that fails stops the sweep
  with a one-line error naming the path and the node.
- **Fault tolerance.** A task whose Ray worker dies (a node lost, a preemption, Ray's memory monitor)
  or whose run's worker process is killed before it wrote ``bench.json`` (``WorkerLost``) is retried
  by Ray up to ``--max-retries`` times; the retry starts the worker again, which resumes from the run's
  ``last.pt`` (the engine resumes exactly). The run's worker gets SIGTERM when the Ray worker running
  its task dies (``PR_SET_PDEATHSIG``), so a lost or cancelled task leaves nothing writing.
- **Ctrl-C** on the driver cancels every outstanding task (``ray.cancel(force=True)``), waits until
  they have ended, and stops like the local sweep: the same command continues where it stopped.
- **Progress**: one display on the driver (runs done / running / queued / failed, and per running run
  its node and latest validation score, read from its ``log.jsonl``); the workers run without progress
  bars and their output stays in Ray's logs (``/tmp/ray/session_latest/logs`` on each node).

Ray is imported only here, and only when this launcher is used (``pip install 'segbench[ray]'``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from segbench.bench.protocol.profiles import Profile
from segbench.bench.protocol.record import WorkerResult
from segbench.bench.protocol.sweep import LauncherError, PlannedRun, SweepState, write_spec
from segbench.bench.protocol.worker import run_worker_process
from segbench.env_settings import env_seconds
from segbench.metric_defs import metric as metric_definition
from segbench.run_files import LOG_FILE

__all__ = ["RAY_MISSING", "LauncherError", "WorkerLost", "RayOptions", "RayLauncher", "check_shared_storage", "probe_address",
           "run_resources"]

RAY_MISSING = "--launcher ray needs Ray: pip install 'segbench[ray]'"
PROBE_PREFIX = ".segbench-shared-check-"  # the markers of the shared-storage check (removed after it)
PROBE_TIMEOUT_S = 300  # for every node to answer the check (a cold worker start on a busy cluster)
REFRESH_S = 2.0  # how often the driver's display reads the running runs' logs
SHOWN_RUNNING = 4  # running runs the display names (with their latest validation)


class WorkerLost(RuntimeError):
    """The run's worker process was killed before it wrote its result: Ray retries the task, and the
    retry resumes the run from its ``last.pt``."""


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # ``ray.init(address=...)``: None finds a running cluster or starts one here
    gpus_per_run: int | None = None  # None: 1 where the cluster has GPUs and the runs may use them, else 0
    cpus_per_run: int | None = None  # None: the node's CPUs per GPU (GPU runs), a whole node (CPU runs)
    max_retries: int = 3  # per task, after a lost worker or node


def _import_ray():
    try:
        import ray
    except ImportError:
        raise LauncherError(RAY_MISSING) from None
    return ray


# --- on the workers ------------------------------------------------------------------------------


class _Events:
    """A Ray actor the tasks tell when an attempt starts (which run, on which node) and stops, for the
    driver's display. (An attempt whose Ray worker died says nothing: its run shows as running until
    Ray starts it again or gives up.)"""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, str, float]] = []

    def note(self, kind: str, run_dir: str, host: str) -> None:
        self.items.append((kind, run_dir, host, time.time()))

    def take(self) -> list[tuple[str, str, str, float]]:
        items, self.items = self.items, []
        return items


def _run_task(run: PlannedRun, profile: Profile, processes: int, events: Any,
              tracking: Any = None) -> tuple[WorkerResult, float]:
    """One run (its ``run_dir`` absolute), inside a Ray task: its worker process, as the local sweep
    starts it; ``WorkerLost`` (retried by Ray) when that process was killed before writing its result."""
    host = socket.gethostname()
    events.note.remote("start", str(run.run_dir), host)
    try:
        # Written again by every attempt: the engine deletes the sweep's files when a run starts afresh,
        # and the local sweep writes the spec before every start as well.
        write_spec(run, profile, tracking)  # with the review's tracking context, as the local sweep writes it
        started = time.perf_counter()
        result, lost = run_worker_process(run.run_dir, run.config_hash, progress=False, processes=processes)
    finally:
        events.note.remote("stop", str(run.run_dir), host)
    if lost:
        raise WorkerLost(f"{result.error} on {host}")
    return result, time.perf_counter() - started


def _call_task(fn: Callable, args: tuple, kwargs: dict) -> Any:
    return fn(*args, **kwargs)


def _probe(out: str, token: str, data_folders: list[str]) -> dict:
    """On one node: does it see the driver's marker under ``out`` (and the data folders), and can it
    write there? Returns its host and either ``problem`` or the token of the marker it wrote."""
    host = socket.gethostname()
    marker = Path(out) / f"{PROBE_PREFIX}{token}"
    try:
        seen = marker.read_text() == token
    except FileNotFoundError:
        seen = False
    except OSError as err:
        return {"host": host, "problem": f"cannot read {marker} ({type(err).__name__}: {err})"}
    if not seen:
        return {"host": host, "problem": f"does not see {marker}, which the driver wrote"}
    missing = [folder for folder in data_folders if not Path(folder).is_dir()]
    if missing:
        return {"host": host, "problem": f"does not see the data folder {missing[0]}"}
    mine = secrets.token_hex(8)
    try:
        (Path(out) / f"{PROBE_PREFIX}{token}-{mine}").write_text(mine)
    except OSError as err:
        return {"host": host, "problem": f"cannot write into {out} ({type(err).__name__}: {err})"}
    return {"host": host, "token": mine}


# --- on the driver -------------------------------------------------------------------------------


def connect_timeout() -> float:
    """``SEGBENCH_RAY_CONNECT_TIMEOUT_S`` (default 15): how long ``--ray-address`` may take to answer."""
    try:
        return env_seconds("SEGBENCH_RAY_CONNECT_TIMEOUT_S", 15.0)
    except ValueError as err:
        raise LauncherError(str(err)) from None


def probe_address(address: str) -> None:
    """``LauncherError`` within ``connect_timeout()`` seconds unless something accepts a connection at
    ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``): Ray's own connect retries for minutes, printing
    warnings, where the host is unknown or nothing listens."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise LauncherError(f"--ray-address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379) or auto")
    timeout = connect_timeout()
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:  # refused, unknown host (gaierror), timed out
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise LauncherError(f"--ray-address {address}: no Ray cluster answers there within {timeout:g} s ({reason}); "
                            "start one with `ray start --head` or give its address (SEGBENCH_RAY_CONNECT_TIMEOUT_S "
                            "sets the wait)") from None


def _alive_nodes(ray) -> list[dict]:
    return [node for node in ray.nodes() if node.get("Alive")]


def _node_name(node: dict) -> str:
    return f"{node.get('NodeManagerHostname') or '?'} ({node.get('NodeManagerAddress') or '?'})"


def run_resources(options: RayOptions, nodes: list[dict], plan: list[PlannedRun]) -> tuple[int, int]:
    """(GPUs, CPUs) each run asks for. Defaults: one GPU per run where the cluster has GPUs (unless every
    run trains with ``train.device=cpu``) with the CPUs that come with it (the node's CPUs per GPU, the
    least of any GPU node); on CPUs only, a whole node per run (the fewest CPUs of any node), so a run's
    timings are taken as the local launcher takes them; ``--cpus-per-run 1`` packs more runs on a node."""
    resources = [node.get("Resources", {}) for node in nodes]
    gpu_nodes = [r for r in resources if r.get("GPU", 0) >= 1]
    wants_gpu = any(run.config.train.device != "cpu" for run in plan)
    gpus = options.gpus_per_run if options.gpus_per_run is not None else int(bool(gpu_nodes) and wants_gpu)
    if options.cpus_per_run is not None:
        cpus = options.cpus_per_run
    elif gpus:
        cpus = max(1, min((math.floor(r.get("CPU", 0) / r["GPU"] * gpus) for r in gpu_nodes), default=1))
    else:
        cpus = max(1, min((int(r.get("CPU", 0)) for r in resources if r.get("CPU", 0) >= 1), default=1))
    return gpus, cpus


def check_shared_storage(ray, out: Path, nodes: list[dict], data_folders: list[str]) -> None:
    """Every node of ``nodes`` sees what the driver writes under ``out`` and the driver sees what each
    writes there; else ``LauncherError`` naming the path and the nodes. The markers are removed after."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = secrets.token_hex(8)
    marker = out / f"{PROBE_PREFIX}{token}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        marker.write_text(token)
    except OSError as err:
        raise LauncherError(f"cannot write into --out {out}: {err}") from None
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
        str(out), token, data_folders): node for node in nodes}
    problems = []
    try:
        ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
        problems += [f"node {_node_name(refs[ref])} did not answer within {PROBE_TIMEOUT_S} s" for ref in late]
        for ref in ready:
            try:
                answer = ray.get(ref)
            except ray.exceptions.RayError as err:
                problems.append(f"node {_node_name(refs[ref])} failed the check: {type(err).__name__}")
                continue
            if "problem" in answer:
                problems.append(f"node {_node_name(refs[ref])} {answer['problem']}")
            elif not _read(out / f"{PROBE_PREFIX}{token}-{answer['token']}", answer["token"]):
                problems.append(f"the driver does not see the file node {_node_name(refs[ref])} wrote into {out}")
    finally:
        for path in out.glob(f"{PROBE_PREFIX}{token}*"):
            path.unlink(missing_ok=True)
    if problems:
        raise LauncherError(f"--out {out} must be storage every Ray node sees at the same path (a shared disk): "
                            + "; ".join(problems))


def _read(path: Path, expected: str) -> bool:
    try:
        return path.read_text() == expected
    except OSError:
        return False


def _latest_val(run_dir: Path, metric: str) -> tuple[int, float] | None:
    """(iteration, score) of the last validation in the run's ``log.jsonl`` (its tail only), or None."""
    try:
        with open(run_dir / LOG_FILE, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the first, cut line of the tail, or one being written
        if record.get("event") == "val" and isinstance(record.get(metric), (int, float)):
            return int(record["iteration"]), float(record[metric])
    return None


class _Display:
    """The driver's one progress display: a tqdm line (``progress``) or a line said whenever a run
    starts or ends (``--no-progress``)."""

    def __init__(self, runs: list[PlannedRun], progress: bool, say: Callable[[str], None]):
        self.runs = {str(run.run_dir.resolve()): run for run in runs}
        self.say = say
        self.starts: dict[str, list[tuple[str, float]]] = {}  # run dir -> (host, time) of each attempt
        self.active: set[str] = set()  # runs with an attempt under way
        self.ended: set[str] = set()
        self.failed = 0
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=len(runs), desc=self.line(), file=sys.stderr, bar_format="runs [{elapsed}] {desc}")

    def started(self, run_dir: str, host: str, when: float) -> int:
        """Note an attempt starting; returns its number (1: the first; 0: the run has already ended, the
        note came late)."""
        if run_dir in self.ended:
            return 0
        self.starts.setdefault(run_dir, []).append((host, when))
        self.active.add(run_dir)
        return len(self.starts[run_dir])

    def stopped(self, run_dir: str) -> None:
        self.active.discard(run_dir)

    def ended_run(self, run_dir: str, ok: bool) -> None:
        self.ended.add(run_dir)
        self.failed += not ok
        if self.bar is not None:
            self.bar.update(1)

    def line(self) -> str:
        running = [d for d in self.starts if d in self.active and d not in self.ended]
        queued = len(self.runs) - len(self.ended) - len(running)
        parts = [f"{len(self.ended) - self.failed} done, {len(running)} running, {queued} queued, {self.failed} failed"]
        for run_dir in running[:SHOWN_RUNNING]:
            run = self.runs[run_dir]
            host, _ = self.starts[run_dir][-1]
            metric = run.config.train.best_metric
            latest = _latest_val(run.run_dir, metric)
            name = metric_definition(metric).label
            shown = f"val {name} {latest[1]:.4f} at it {latest[0]}" if latest else "no validation yet"
            retry = f", attempt {len(self.starts[run_dir])}" if len(self.starts[run_dir]) > 1 else ""
            parts.append(f"{run.label} {run.name} on {host}{retry}: {shown}")
        if len(running) > SHOWN_RUNNING:
            parts.append(f"{len(running) - SHOWN_RUNNING} more running")
        return " | ".join(parts)

    def refresh(self, changed: bool) -> None:
        if self.bar is not None:
            self.bar.set_description_str(self.line(), refresh=True)
        elif changed:
            self.say(f"runs: {self.line()}")

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Say something without breaking the bar."""
        if self.bar is None:
            yield
            return
        from tqdm import tqdm

        with tqdm.external_write_mode(file=sys.stderr):
            yield

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RayLauncher:
    """Runs a sweep's runs as Ray tasks (``sweep.Launcher``). ``connect`` before, ``close`` after. The keywords
    are ``segbench run``'s ``--ray-address``, ``--gpus-per-run``, ``--cpus-per-run``, ``--max-retries``."""

    where = "in one Ray task with a run's resources (its messages are in Ray's logs)"

    def __init__(self, say: Callable[[str], None] = print, *, ray_address: str | None = None,
                 gpus_per_run: int | None = None, cpus_per_run: int | None = None, max_retries: int | None = None):
        retries = {} if max_retries is None else {"max_retries": max_retries}
        self.options = RayOptions(address=ray_address, gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run, **retries)
        self.say = say
        self.ray = None
        self.owned = False  # this launcher connected (or started Ray), so it disconnects
        self.gpus = 0
        self.cpus = 1

    def connect(self, plan: list[PlannedRun], out: str | Path) -> None:
        """Join the cluster (``--ray-address``; a running one found the usual way, else a new one on this
        machine), decide what each run asks for, check that a node can hold a run and that ``out`` is
        shared with every such node. Raises ``LauncherError``."""
        if self.options.address not in (None, "auto"):
            probe_address(self.options.address)  # ray.init retries an unreachable address for minutes
        ray = self.ray = _import_ray()
        if not ray.is_initialized():
            import logging

            try:
                ray.init(address=self.options.address, log_to_driver=False, logging_level=logging.WARNING)
            except ConnectionError as err:
                raise LauncherError(f"--ray-address {self.options.address}: no Ray cluster there ({err})") from None
            self.owned = True
        nodes = _alive_nodes(ray)
        self.gpus, self.cpus = run_resources(self.options, nodes, plan)
        fitting = [n for n in nodes if n.get("Resources", {}).get("CPU", 0) >= self.cpus
                   and n.get("Resources", {}).get("GPU", 0) >= self.gpus]
        if not fitting:
            have = ", ".join(f"{_node_name(n)}: {n.get('Resources', {}).get('CPU', 0):g} CPU, "
                             f"{n.get('Resources', {}).get('GPU', 0):g} GPU" for n in nodes)
            raise LauncherError(f"no node of the Ray cluster can hold a run asking for {self.gpus} GPU(s) and "
                                f"{self.cpus} CPU(s) (--gpus-per-run, --cpus-per-run); nodes: {have}")
        data_folders = sorted({run.config.data.source for run in plan if os.path.isabs(run.config.data.source)})
        check_shared_storage(ray, Path(out).resolve(), fitting, data_folders)
        slots = sum(min(n["Resources"].get("CPU", 0) // self.cpus,
                        n["Resources"].get("GPU", 0) // self.gpus if self.gpus else math.inf) for n in fitting)
        self.say(f"ray: {len(fitting)} of {len(nodes)} node(s) can hold a run ({self.gpus} GPU, {self.cpus} CPU "
                 f"each): up to {slots:.0f} at once; a lost run is retried up to {self.options.max_retries} times")

    def _task_options(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k.startswith("SEGBENCH_")}  # as a local worker inherits them
        return {"num_cpus": self.cpus, "num_gpus": self.gpus, **({"runtime_env": {"env_vars": env}} if env else {})}

    def launch(self, runs: list[PlannedRun], state: SweepState) -> None:
        ray = self.ray
        ready = []
        for run in runs:
            failure = state.prepare(run, queued=True)
            if failure is not None:
                state.record(run, failure, 0.0)
            else:
                ready.append(run)
        if not ready:
            return
        events = ray.remote(num_cpus=0)(_Events).remote()
        task = ray.remote(_run_task).options(max_retries=self.options.max_retries, retry_exceptions=[WorkerLost],
                                             **self._task_options())
        processes = max(1, self.gpus)
        refs = {task.remote(dataclasses.replace(run, run_dir=run.run_dir.resolve()), state.profile, processes, events,
                            state.tracking): run for run in ready}
        display = _Display(ready, state.progress, state.say)
        try:
            while refs:
                ray.wait(list(refs), num_returns=1, timeout=REFRESH_S)  # until one ends, or time to refresh
                changed = False
                for kind, run_dir, host, when in ray.get(events.take.remote()):
                    if kind == "stop":
                        display.stopped(run_dir)
                        changed = True
                        continue
                    attempt = display.started(run_dir, host, when)
                    changed |= attempt > 0
                    if attempt > 1:
                        with display.paused():
                            state.say(f"{state.label(display.runs[run_dir])}: retried on {host} (attempt {attempt} "
                                      f"of {self.options.max_retries + 1}), resuming from its last.pt")
                for ref in ray.wait(list(refs), num_returns=len(refs), timeout=0)[0]:
                    run, changed = refs.pop(ref), True
                    key = str(run.run_dir.resolve())
                    result, elapsed = self._result(ref, run, display.starts.get(key, []))
                    display.ended_run(key, result.ok)
                    with display.paused():
                        state.record(run, result, elapsed)
                display.refresh(changed)
        except KeyboardInterrupt:
            self._cancel(list(refs))
            raise
        finally:
            display.close()

    def _result(self, ref, run: PlannedRun, starts: list[tuple[str, float]]) -> tuple[WorkerResult, float]:
        """The task's result, or a failure record when Ray gave up on it (after its retries)."""
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as err:
            elapsed = time.time() - starts[-1][1] if starts else 0.0
            attempts = f"{len(starts)} attempt(s)" if starts else "no attempt started"
            cause = getattr(err, "cause", None)
            if isinstance(cause, WorkerLost):
                error = f"{cause} ({attempts}; the same command resumes it from its last.pt)"
            elif isinstance(err, ray.exceptions.RayTaskError):
                error = f"the Ray task failed: {str(cause or err).splitlines()[0]}"
            else:  # its worker or node lost, retries used up
                error = (f"its Ray worker was lost ({type(err).__name__}, {attempts}; the same command resumes it "
                         f"from its last.pt): {str(err).splitlines()[0] if str(err) else ''}").rstrip(": ")
            return WorkerResult(hash=run.config_hash, error=error), elapsed

    def _cancel(self, refs: list) -> None:
        """Ctrl-C: stop every outstanding task and wait until they have ended (their Ray workers killed;
        each run's worker process follows its Ray worker), so nothing is left writing into a run folder."""
        ray = self.ray
        for ref in refs:
            ray.cancel(ref, force=True)
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=60)

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` in one Ray task with a run's resources (the review's speed section is
        measured on a device like the runs', not on the driver); Ctrl-C cancels it, a failure after the
        retries raises ``LauncherError``."""
        ray = self.ray
        ref = ray.remote(_call_task).options(max_retries=self.options.max_retries, **self._task_options()).remote(
            fn, args, kwargs)
        try:
            return ray.get(ref)
        except KeyboardInterrupt:
            self._cancel([ref])
            raise
        except ray.exceptions.RayError as err:
            raise LauncherError(f"the Ray task failed ({type(err).__name__}): {str(err).splitlines()[0]}") from None

    def close(self) -> None:
        if self.owned and self.ray is not None:
            self.ray.shutdown()
            self.owned = False
        self.owned = False
