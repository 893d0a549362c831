"""Training, evaluation and inference.

- ``train(cfg, run_dir)``: the training loop (``train.py``), resumable and data-parallel;
- ``evaluate_run(run_dir, split)``: a finished run's best checkpoint on a split (``evaluate.py``);
- ``load_run_model(run_dir)``: a trained model with its config and data info (``checkpoint.py``);
- losses (``losses.py``), metrics (``metrics.py``), whole-image / sliding-window / TTA inference
  (``inference.py``), optimiser and schedule (``optim.py``), devices and precision (``device.py``),
  process groups and batch sharding (``distributed.py``).
"""

from segbench.engine.checkpoint import DataInfo, load_run_model
from segbench.engine.evaluate import evaluate, evaluate_run
from segbench.engine.hardware import OutOfMemory
from segbench.engine.train import ConfigMismatch, TrainingDiverged, train

__all__ = ["train", "evaluate", "evaluate_run", "load_run_model", "DataInfo", "TrainingDiverged", "ConfigMismatch", "OutOfMemory"]
