"""The TensorBoard tracker: event files in ``RUN/tensorboard`` (``tensorboard --logdir RUN``, or a review's OUT).

Scalars at their iteration; the configuration as TensorBoard hparams, whose metrics are the ``best/...``
figures the run logs at its end. A resumed run writes a purge marker at its first step, so TensorBoard
hides the steps an interrupted session logged after its checkpoint and each step appears once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from segbench.engine.metrics import SCALAR_METRICS

__all__ = ["TensorBoardTracker"]


def _hparam_value(value: Any) -> bool | int | float | str:
    return value if isinstance(value, (bool, int, float, str)) else str(value)


class TensorBoardTracker:
    """``torch.utils.tensorboard.SummaryWriter`` behind the ``Tracker`` seam."""

    def __init__(self, log_dir: Path, start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir, self.start_step = Path(log_dir), start_step
        # purge_step: events at and after start_step from an earlier session are hidden (a resumed run, or a
        # run started over in the same folder at step 0).
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=start_step, flush_secs=30)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.start_step > 0:
            return  # a resumed run: the session that started it wrote them
        from torch.utils.tensorboard.summary import hparams

        metric_names = {f"best/{name}": 0.0 for name in SCALAR_METRICS}  # logged as scalars at the end
        experiment, start, _ = hparams({key: _hparam_value(value) for key, value in params.items()}, metric_names)
        for summary in (experiment, start):
            self.writer.file_writer.add_summary(summary)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_artifact(self, path: Path) -> None:
        pass  # the files are in the run folder, next to the event files

    def close(self, finished: bool = True) -> None:
        if finished:
            from torch.utils.tensorboard.summary import hparams

            _, _, end = hparams({}, {})
            self.writer.file_writer.add_summary(end)
        self.writer.close()
