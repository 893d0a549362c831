"""Issue 15, items 2, 3 and 5: `segbench check` refuses data that cannot train, in one line naming the file."""

from pathlib import Path

import numpy as np
from click.testing import CliRunner

from segbench.cli import main



def _check(root: Path, *args):
    return CliRunner().invoke(main, ["check", str(root), "--cache-dir", str(root.parent / "cache"), *map(str, args)])


def _one_error_line(result) -> str:
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def _snapshot(root: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_stray_mask_values_are_an_error_naming_file_values_and_counts(tmp_path, helpers):
    root = helpers.make_folder(tmp_path / "ds", count=6, high=255)
    stray = root / "masks" / "img3.png"
    mask = np.array(__import__("PIL.Image", fromlist=["Image"]).open(stray))
    mask[0, :8] = 128  # 8 pixels of a value that fits no reading
    helpers.save_image(stray, mask)
    before = _snapshot(root)
    result = _check(root)
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert "img3.png" in line and "128: 8 px in 1 file(s)" in line and "0/255" in line
    assert _snapshot(root) == before


def test_clean_binary_masks_still_pass_with_a_notice(tmp_path, helpers):
    result = _check(helpers.make_folder(tmp_path / "ds", count=6, high=255))
    assert result.exit_code == 0 and "OK with" in result.output and "mapped to 0/1" in result.output


def test_nan_voxel_is_an_error_unless_replaced(tmp_path, helpers):
    root = tmp_path / "vols"
    for k in range(3):
        image, labels = helpers.ball_volume(seed=k)
        if k == 1:
            image[2, 3, 4] = np.nan
        helpers.save_nifti(root / "imagesTr" / f"case{k}.nii.gz", image)
        helpers.save_nifti(root / "labelsTr" / f"case{k}.nii.gz", labels)
    result = _check(root, "--val-fraction", "0.34")
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert "case1.nii.gz" in line and "1 non-finite" in line and "replace_nonfinite" in line
    assert _check(root, "--val-fraction", "0.34", "--replace-nonfinite", "0").exit_code == 0


def test_all_background_masks_are_an_error(tmp_path, helpers):
    root = helpers.make_folder(tmp_path / "ds", count=4)
    for mask in (root / "masks").iterdir():
        helpers.save_image(mask, np.zeros((12, 16), np.uint8))
    result = _check(root, "--num-classes", "2")
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert "train split holds no foreground" in line and "masks" in line


def test_val_without_foreground_is_a_warning_naming_the_split(tmp_path, helpers):
    root = helpers.make_folder(tmp_path / "ds", count=4)
    (tmp_path / "split.json").write_text('{"train": ["img0", "img1", "img2"], "val": ["img3"]}')
    helpers.save_image(root / "masks" / "img3.png", np.zeros((12, 16), np.uint8))
    result = _check(root, "--split-file", tmp_path / "split.json")
    assert result.exit_code == 0
    assert "val split holds no foreground" in result.output and "no best.pt" in result.output
