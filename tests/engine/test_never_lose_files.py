"""Issue 26: no command deletes, truncates or writes through a path it did not create in this run or list in
its own marker (``segbench.run_files.writable``); full disks, damaged files and empty data say so in one line."""

import errno
import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import segbench.engine
from segbench.cli import main
from segbench.engine.checkpoint import save_checkpoint
from segbench.run_files import MARKER

TINY = ["--arch", "tiny", "--quiet", "--set", "train.iterations=4", "--set", "train.val_interval=2",
        "--set", "train.batch_size=4", "--set", "train.device=cpu", "--set", "eval.test_at_end=false"]


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture
def trained(tiny_env, tmp_path):
    run = tmp_path / "run"
    result = _invoke("train", "--out", run, *TINY)
    assert result.exit_code == 0, result.output
    return run


# --- item 1: --overwrite alone starts over with the run's own configuration ---------------------------------


def test_overwrite_without_arguments_starts_over_with_the_saved_config(trained, monkeypatch):
    real = segbench.engine.train
    seen = []

    def train_recording(cfg, run_dir, **kwargs):
        seen.append(cfg)
        assert cfg.model.arch == "tiny" and cfg.train.iterations == 4, "a default run replaced the trained one"
        return real(cfg, run_dir, **kwargs)

    monkeypatch.setattr(segbench.engine, "train", train_recording)
    result = _invoke("train", "--out", trained, "--overwrite", "--quiet")
    assert result.exit_code == 0, result.output
    assert "starting over with" in result.output and seen and (trained / "best.pt").is_file()


# --- item 2: adopting an older run folder takes none of the user's files --------------------------------------


def _legacy(run):
    (run / MARKER).unlink()  # a run from before the marker
    (run / "config.yaml").write_text("my: own settings\n")
    (run / "eval_final.json").write_text('{"mine": 1}')
    (run / "notes.txt").write_text("notes")


def test_adopting_an_older_run_never_takes_the_users_files(trained):
    _legacy(trained)
    other = [*TINY, "--set", "train.iterations=6"]
    result = _invoke("train", "--out", trained, *other)
    assert result.exit_code == 1, result.output
    marker = json.loads((trained / MARKER).read_text()) if (trained / MARKER).is_file() else {"files": []}
    assert "config.yaml" not in marker["files"] and "eval_final.json" not in marker["files"]
    result = _invoke("train", "--out", trained, "--overwrite", *other)
    assert "config.yaml" in _one_line_error(result)
    assert (trained / "config.yaml").read_text() == "my: own settings\n"
    assert (trained / "eval_final.json").read_text() == '{"mine": 1}' and (trained / "notes.txt").is_file()
    assert (trained / "last.pt").is_file()  # refused before anything was deleted


def test_an_older_run_of_segbench_alone_is_still_adopted_and_resumed(trained):
    (trained / MARKER).unlink()
    result = _invoke("train", "--out", trained, *TINY)
    assert result.exit_code == 0, result.output
    files = json.loads((trained / MARKER).read_text())["files"]
    assert {"config.yaml", "last.pt", "best.pt", "log.jsonl", "metrics.json"} <= set(files)


# --- item 3: never write through a symbolic link ------------------------------------------------------------


def test_a_log_that_is_a_link_is_refused_and_its_target_untouched(trained, tmp_path):
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("someone else's file\n")
    (trained / "log.jsonl").unlink()
    (trained / "log.jsonl").symlink_to(outside)
    message = _one_line_error(_invoke("train", "--out", trained, *TINY))
    assert "log.jsonl" in message and "symbolic link" in message
    assert outside.read_text() == "someone else's file\n"


# --- item 4: predict and run overwrite nothing they did not write ----------------------------------------------


def test_predict_never_replaces_a_file_it_did_not_write(trained, tiny_env, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(tiny_env.TinySegmentation(1, seed=5)[0]["image"][0].numpy()).save(images / "case00.tif")
    out = tmp_path / "out"
    out.mkdir()
    (out / "case00_mask.png").write_bytes(b"hand-made")
    message = _one_line_error(_invoke("predict", trained, images, out))
    assert "case00_mask.png" in message and (out / "case00_mask.png").read_bytes() == b"hand-made"
    assert not (out / "case00_overlay.png").exists()
    fresh = tmp_path / "fresh"
    for _ in range(2):  # its own outputs it may replace
        result = _invoke("predict", trained, images, fresh)
        assert result.exit_code == 0, result.output


def test_run_refuses_a_folder_that_is_not_a_sweep(tmp_path):
    out = tmp_path / "project"
    (out / "report").mkdir(parents=True)
    (out / "report" / "index.html").write_text("my page")
    message = _one_line_error(_invoke("run", "--archs", "unet", "--out", out, "--report-only"))
    assert str(out) in message and (out / "report" / "index.html").read_text() == "my page"


# --- item 5: a full disk is one line naming the device and the file -----------------------------------------


class _FillingDisk(io.RawIOBase):
    """A file on a disk that fills up after a few bytes."""

    def __init__(self, *args):
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.written += len(data)
        if self.written > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(data)


def test_a_full_disk_names_the_device_and_the_file(tmp_path):
    from segbench.commands.errors import _message
    from segbench.run_files import DiskFull  # noqa: I001 - new in this issue

    with pytest.raises(DiskFull) as caught:
        save_checkpoint({"weights": torch.zeros(10_000)}, tmp_path / "last.pt", open_file=_FillingDisk)
    assert str(caught.value).startswith("no space left on /") and str(tmp_path / "last.pt") in str(caught.value)
    assert "unexpected pos" not in _message(caught.value) and not list(tmp_path.iterdir())


# --- item 8: data with nothing but background is refused by check, train and run ------------------------------


def _background_only(folder):
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / "images" / f"c{i}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "masks" / f"c{i}.png")


def test_background_only_data_fails_check(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    _background_only(tmp_path / "data")
    result = _invoke("check", tmp_path / "data")
    assert result.exit_code == 1 and "no foreground" in result.output, result.output


# --- item 9: errors that name their file and tell the truth ---------------------------------------------------


def test_an_empty_metrics_file_is_written_again_on_resume(trained):
    (trained / "metrics.json").write_text("")
    result = _invoke("train", "--out", trained, *TINY)
    assert result.exit_code == 0, result.output
    assert json.loads((trained / "metrics.json").read_text())["arch"] == "tiny"


def test_an_empty_split_record_is_named(tmp_path):
    from segbench.data import DataError
    from segbench.engine.run_folder import compare_split_record

    (tmp_path / "data_split.json").write_text("")
    record = {"class_names": ["a", "b"], "splits": {"val": ["x"]}, "content_hash": "0"}
    with pytest.raises(DataError, match="data_split.json is damaged"):
        compare_split_record(tmp_path, record, "val")


def test_a_deleted_best_checkpoint_is_not_blamed_on_validation(trained):
    (trained / "best.pt").unlink()
    message = _one_line_error(_invoke("eval", trained))
    assert "deleted" in message and "no validation gave" not in message


def test_a_full_cache_disk_in_check_does_not_mention_out():
    from segbench.commands.errors import _message

    message = _message(OSError(errno.ENOSPC, "No space left on device", "/cache/x/000000_image.npy"))
    assert "--out" not in message and "no space left on /" in message and "000000_image.npy" in message


def test_eval_on_a_read_only_run_folder_prints_its_figures_and_says_why_they_were_not_saved(trained, monkeypatch):
    import segbench.engine.run_folder as run_folder

    def read_only(run_dir, *names):  # the first write of eval, into a folder on a read-only file system
        raise OSError(errno.EROFS, "Read-only file system", str(run_dir / f".{MARKER}.tmp"))

    monkeypatch.setattr(run_folder, "record", read_only)
    result = _invoke("eval", trained)
    message = _one_line_error(result)
    assert "mDice_fg" in result.output and "val (best checkpoint)" in result.output  # the figures it measured
    assert "eval_val.json was not saved" in message and "Read-only file system" in message and "--out" not in message
    assert not (trained / "eval_val.json").exists()


def test_a_full_cache_disk_in_check_names_the_cache_file(tmp_path, monkeypatch):
    # A write that fails on a full disk raises OSError(ENOSPC) naming no file.
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    folder = tmp_path / "data"
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / "images" / f"c{i}.png")
        Image.fromarray(np.eye(8, dtype=np.uint8)).save(folder / "masks" / f"c{i}.png")
    message = _one_line_error(_invoke("check", folder, "--cache-dir", tmp_path / "cache"))
    assert "no space left on /" in message and str(tmp_path / "cache") in message and ".npy" in message
    assert "--out" not in message


# --- item 6: a damaged ImageNet weights cache is converted again, never a traceback ----------------------------


@pytest.mark.parametrize("damage", [b"garbage bytes, not a torch file", b""])
def test_a_damaged_converted_weights_cache_is_not_trusted(tmp_path, monkeypatch, damage):
    from segbench.checkpoints.imagenet import WeightsUnavailableError, cache_dir, imagenet_state_dict

    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("SEGBENCH_OFFLINE", "1")  # converting again needs the published file: offline, named
    cache_dir().mkdir(parents=True)
    (cache_dir() / "resnet18.segbench.pt").write_bytes(damage)
    with pytest.raises(WeightsUnavailableError, match="resnet18"):
        imagenet_state_dict("resnet18")
