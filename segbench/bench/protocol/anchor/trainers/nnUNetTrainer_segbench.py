"""nnU-Net's own trainer with the review's schedule: the anchor's matched budget (epochs x iterations per
epoch), its seed and its thread count, read from the JSON file named by ``SEGBENCH_NNUNET_SCHEDULE``.
Everything else (network, loss, augmentation, optimiser, learning-rate schedule over its epochs) is
nnU-Net's ``nnUNetTrainer`` unchanged.

This folder is what segbench sets ``nnUNet_extTrainer`` to, so nnU-Net's own commands find the class too:
``nnUNet_extTrainer=<this folder> SEGBENCH_NNUNET_SCHEDULE=<run>/nnunet_schedule.json nnUNetv2_predict ...
-tr nnUNetTrainer_segbench``. It imports nnU-Net, so only nnU-Net's environment imports it.
"""

import json
import os
import random

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

SCHEDULE_ENV = "SEGBENCH_NNUNET_SCHEDULE"


class nnUNetTrainer_segbench(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        path = os.environ.get(SCHEDULE_ENV)
        if not path:  # prediction from a finished run needs no schedule
            return
        with open(path) as f:
            schedule = json.load(f)
        self.num_epochs = int(schedule["epochs"])
        self.num_iterations_per_epoch = int(schedule["iterations_per_epoch"])
        self.num_val_iterations_per_epoch = int(schedule["val_iterations_per_epoch"])
        if schedule.get("threads"):
            torch.set_num_threads(int(schedule["threads"]))
        seed = int(schedule.get("seed", 0))
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
