"""One line for every error a user can cause, for every command; tracebacks only for bugs.

``user_errors()`` wraps each subcommand (``segbench.cli``): bad data, configs, checkpoints, run
folders, missing weights, a full or read-only disk become ``Error: <one line>`` and exit status 1.
Anything else is a bug and keeps its traceback. ``SEGBENCH_DEBUG=1`` shows every traceback.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from typing import Iterator

import click

from segbench.run_files import WRITE_ERRNOS, DiskFull

__all__ = ["user_errors", "one_line", "debugging"]


def debugging() -> bool:
    return bool(os.environ.get("SEGBENCH_DEBUG"))


def one_line(text: str) -> str:
    """Collapse a message onto one line (some library messages carry newlines)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _user_error_types() -> tuple[type[BaseException], ...]:
    from segbench.config import ConfigError
    from segbench.data import DataError
    from segbench.engine.hardware import OutOfMemory
    from segbench.engine.ensemble import EnsembleError
    from segbench.engine.predict import PredictError
    from segbench.engine.run_folder import RunFolderError
    from segbench.engine.train import ConfigMismatch, TrainingDiverged
    from segbench.engine.tracking import TrackerMissing
    from segbench.checkpoints.io import CheckpointError

    types: list[type[BaseException]] = [ConfigError, DataError, RunFolderError, ConfigMismatch, TrainingDiverged,
                                        OutOfMemory, PredictError, EnsembleError, CheckpointError, FileNotFoundError,
                                        TrackerMissing]
    try:
        from segbench.checkpoints.imagenet import WeightsUnavailableError

        types.append(WeightsUnavailableError)
    except ImportError:  # pragma: no cover - optional module layout
        pass
    return tuple(types)


def _message(err: BaseException) -> str | None:
    """The one-line message for a user error, or None for a bug."""
    if isinstance(err, _user_error_types()):
        return one_line(err)
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT) and err.filename:
        full = err if isinstance(err, DiskFull) else DiskFull(err.filename)
        return f"{full}; free disk space there, then run the same command again"
    if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
        where = err.filename or "a file"
        return (f"cannot write {where}: {err.strerror or err}; free disk space or make the folder writable, "
                "then run the same command again")
    if isinstance(err, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
    if isinstance(err, KeyError):  # the registries: KeyError("unknown architecture ... Valid names: ...")
        return one_line(err.args[0]) if err.args else repr(err)
    if isinstance(err, TypeError) and str(err).startswith("unknown option"):  # build_model's check
        return one_line(err)
    if isinstance(err, ValueError):  # segbench's way of saying an option value is wrong
        return f"{one_line(err)} (SEGBENCH_DEBUG=1 shows where)"
    return None


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into ``click.ClickException`` (one line, exit status 1)."""
    if debugging():
        yield
        return
    try:
        yield
    except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise
    except KeyboardInterrupt:
        click.echo("\ninterrupted", err=True)
        raise SystemExit(130) from None
    except Exception as err:  # noqa: BLE001 - re-raised below unless it is a user error
        message = _message(err)
        if message is None:
            raise
        raise click.ClickException(message) from None
