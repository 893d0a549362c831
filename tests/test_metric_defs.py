"""The one metrics vocabulary: every figure the metrics compute is defined there, once."""

import pytest
import torch

from segbench.bench.report.columns import COLUMNS
from segbench.config import TrainConfig
from segbench.engine.metrics import SegmentationMetrics
from segbench.metric_defs import HEADLINE, METRICS, lower_is_better, metric


def test_every_scalar_the_metrics_compute_is_defined_and_the_headline_is_the_default_best_metric():
    m = SegmentationMetrics(3, compute_hd95=True)
    pred = torch.tensor([[[0, 1, 2], [0, 1, 1]]])
    m.update(pred, pred.clone())
    out = m.compute()
    scalars = {k for k, v in out.items() if isinstance(v, float) and k != "nsd_tolerance"}
    assert scalars <= set(METRICS), scalars - set(METRICS)
    assert HEADLINE in out and TrainConfig().best_metric == HEADLINE


def test_directions_and_split_prefixes():
    assert lower_is_better("hd95_fg") and lower_is_better("val_hd95_fg") and lower_is_better("test_hd95_worst_case")
    assert not lower_is_better("val_nsd_fg") and not lower_is_better("mIoU")
    with pytest.raises(KeyError, match="no metric 'val_dice_typo'"):
        metric("val_dice_typo")


def test_the_report_columns_take_their_direction_from_the_vocabulary():
    for c in COLUMNS:
        try:
            defined = metric(c.key)
        except KeyError:
            continue  # not a metric of the engine (costs, the evidence's figures)
        assert c.better == defined.better, c.key
