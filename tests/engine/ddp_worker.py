"""One process of the 2-process CPU data-parallel test (run by test_distributed.py, not by pytest).

Usage: python ddp_worker.py RUN_DIR OUT_DIR [KEY=VALUE ...]  (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment).
Trains the tiny model and saves this rank's final weights to OUT_DIR/rank{RANK}.pt.
"""

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import torch

spec = importlib.util.spec_from_file_location("segbench_engine_tiny", Path(__file__).with_name("_tiny.py"))
tiny = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tiny)

from segbench.config import load_config  # noqa: E402
from segbench.models.registry import ARCHITECTURES, list_models  # noqa: E402

train_module = importlib.import_module("segbench.engine.train")
list_models()
ARCHITECTURES["tiny"] = tiny.TINY_ENTRY
train_module.load_data = lambda cfg: tiny.tiny_data(train=16, val=9, test=4)  # 3 val cases: 2 + 1 per rank
built = []
real_build = train_module.build_pretrained_model
train_module.build_pretrained_model = lambda *a, **k: built.append(real_build(*a, **k)) or built[-1]

run_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
cfg = load_config(None, ["model.arch=tiny", "train.iterations=6", "train.batch_size=4", "train.val_interval=3",
                         "train.device=cpu", "train.log_interval=1", *sys.argv[3:]])
metrics = train_module.train(cfg, run_dir, progress=False)
rank = int(os.environ["RANK"])
torch.save({"params": {n: p.detach() for n, p in built[0].named_parameters()}, "metrics": metrics,
            "buffers": {n: b.detach() for n, b in built[0].named_buffers()}},
           out_dir / f"rank{rank}.pt")
# Both ranks leave together: a rank that tore its Gloo pairs down while the other still used them made that one
# die at exit ("terminate called without an active exception", status -6) in long, busy test sessions.
torch.distributed.barrier()
torch.distributed.destroy_process_group()
