"""Joint augmentation: label set preserved, deterministic per seed, exact flips and crops, epoch-seeded items."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from segbench.data import AugmentConfig, DataConfig, load_data
from segbench.data.augment import JointAugment, crop_or_pad

IGNORE = 255
OFF = dict(scale=(1.0, 1.0), hflip=0.0, rotate=0.0, gamma=(1.0, 1.0), intensity=0.0, noise_std=0.0)


def _pair(height=20, width=24):
    image = torch.arange(height * width, dtype=torch.float32).reshape(1, height, width) / (height * width)
    mask = torch.zeros(height, width, dtype=torch.long)
    mask[5:15, 6:18] = 1
    mask[8:12, 9:14] = 3
    mask[0, 0] = IGNORE
    return image, mask


def test_mask_values_stay_in_the_label_set_plus_ignore():
    cfg = AugmentConfig(crop_size=(16, 30), scale=(0.5, 1.5), rotate=45, vflip=0.5)
    augment = JointAugment(cfg, IGNORE)
    image, mask = _pair()
    padded = 0
    for seed in range(30):
        out_image, out_mask = augment(image, mask, torch.Generator().manual_seed(seed))
        assert out_image.shape == (1, 16, 30) and out_mask.shape == (16, 30) and out_mask.dtype == torch.long
        assert set(out_mask.unique().tolist()) <= {0, 1, 3, IGNORE}
        padded += int((out_mask[:, -1] == IGNORE).all())
    # A crop wider than the (scaled) image is padded with ignore in the mask.
    assert padded > 0


def test_same_seed_same_output_other_seed_other_output():
    augment = JointAugment(AugmentConfig(crop_size=(16, 16)), IGNORE)
    image, mask = _pair()
    first = augment(image, mask, torch.Generator().manual_seed(7))
    second = augment(image, mask, torch.Generator().manual_seed(7))
    other = augment(image, mask, torch.Generator().manual_seed(8))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


def test_flip_of_a_known_array():
    image = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])
    mask = torch.tensor([[0, 1, 2], [3, 4, 5]])
    flipped_image, flipped_mask = JointAugment(AugmentConfig(**{**OFF, "hflip": 1.0}), IGNORE)(image, mask, torch.Generator())
    assert flipped_image.tolist() == [[[3.0, 2.0, 1.0], [6.0, 5.0, 4.0]]]
    assert flipped_mask.tolist() == [[2, 1, 0], [5, 4, 3]]
    up_down = JointAugment(AugmentConfig(**{**OFF, "vflip": 1.0}), IGNORE)(image, mask, torch.Generator())
    assert up_down[1].tolist() == [[3, 4, 5], [0, 1, 2]]


def test_everything_off_is_identity_and_crop_pad_is_exact():
    image, mask = _pair()
    out_image, out_mask = JointAugment(AugmentConfig(**OFF), IGNORE)(image, mask, torch.Generator().manual_seed(0))
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)
    padded = crop_or_pad(torch.tensor([[1, 2], [3, 4]]), -1, 1, 3, 2, 9)
    assert padded.tolist() == [[9, 9], [2, 9], [4, 9]]


def test_rotation_by_zero_with_scale_two_upsamples_nearest():
    mask = torch.tensor([[0, 1], [2, 3]])
    image = mask[None].float()
    cfg = AugmentConfig(**{**OFF, "scale": (2.0, 2.0), "crop_size": (4, 4)})
    _, out_mask = JointAugment(cfg, IGNORE)(image, mask, torch.Generator().manual_seed(0))
    assert out_mask.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_train_items_depend_on_seed_epoch_index_only(tmp_path, helpers):
    root = helpers.make_folder(tmp_path / "ds", count=6, size=(16, 16))
    data = load_data(DataConfig(source=str(root), augment=AugmentConfig(crop_size=(12, 12))))
    train = data.splits["train"]
    first = [train[i]["image"] for i in range(len(train))]
    loader = DataLoader(train, batch_size=2, shuffle=False, num_workers=2)
    batched = torch.cat([batch["image"] for batch in loader])
    assert torch.equal(batched, torch.stack(first))  # workers reproduce the main process's draws
    assert torch.equal(train[3]["image"], first[3])  # order of access does not matter
    train.set_epoch(1)
    assert not torch.equal(train[3]["image"], first[3])
    train.set_epoch(0)
    assert torch.equal(train[3]["image"], first[3])  # a resumed run redraws the same batch
    val = data.splits["val"]
    assert torch.equal(val[0]["image"], val[0]["image"]) and val[0]["image"].shape == (1, 16, 16)
