"""Issue 15, item 4: every error a user can cause is one line naming the file or key; SEGBENCH_DEBUG=1 keeps tracebacks."""

import errno
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from segbench.cli import main
from segbench.commands.errors import _message

TINY = ["--arch", "tiny", "--quiet", "--set", "train.iterations=4", "--set", "train.val_interval=2",
        "--set", "train.batch_size=4", "--set", "train.device=cpu", "--set", "eval.test_at_end=false"]


def _invoke(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def _one_line(result, *needles):
    assert result.exit_code == 1, result.output
    # progress notes ("resuming with ...") may come first; the error is one line, and the last
    lines = [line for line in result.output.strip().splitlines() if line.strip()][-1:]
    assert result.output.count("Error") == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "weights_only=False" not in lines[0] and "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def trained(tiny_cli_run):
    return tiny_cli_run


def _damage(path, how):
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"not a checkpoint at all" * 40}[how])


@pytest.mark.parametrize("how", ["empty", "truncated", "garbage"])
def test_damaged_checkpoints_are_one_line_everywhere(trained, tiny_env, tmp_path, how):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    for name in ("best.pt", "last.pt"):
        _damage(run / name, how)
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(image)
    _one_line(_invoke("eval", run), "best.pt")
    _one_line(_invoke("predict", run, image.parent, tmp_path / "pred"), "best.pt")
    _one_line(_invoke("export", run), "best.pt")
    _one_line(_invoke("convert", run / "best.pt", tmp_path / "c.pt", "--from", "hf", "--arch", "segformer"), "best.pt")
    _one_line(_invoke("train", "--out", run, "--quiet"), "last.pt")  # resume
    before = (run / "best.pt").read_bytes()
    assert (run / "best.pt").read_bytes() == before and not (tmp_path / "c.pt").exists()


def test_a_pickle_with_code_is_refused_without_torchs_advice(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "payload": np.dtype("float32")}, path)  # any non-tensor object
    _one_line(_invoke("convert", path, tmp_path / "c.pt", "--from", "hf", "--arch", "segformer"), "evil.pt")


@pytest.mark.parametrize("setting, key", [
    ("train.iterations=0", "iterations=0"), ("train.iterations=-3", "iterations=-3"),
    ("train.val_interval=0", "val_interval=0"), ("train.batch_size=0", "batch_size=0"),
    ("model.options.width=abc", "model.options.width"),
])
def test_bad_values_name_the_key(tiny_env, tmp_path, setting, key):
    _one_line(_invoke("train", "--out", tmp_path / "run", *TINY, "--set", setting), key)
    assert not (tmp_path / "run").exists() or not any(p.suffix == ".pt" for p in (tmp_path / "run").iterdir())


def test_non_utf8_config_names_the_file(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_bytes("model:\n  arch: unet  # caf\xe9\n".encode("latin-1"))
    _one_line(_invoke("train", preset, "--out", tmp_path / "run"), "preset.yaml", "UTF-8")


def test_images_of_different_sizes_with_batches_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    for k, size in enumerate([(16, 16), (16, 16), (20, 24), (16, 16), (16, 16)]):
        for kind in ("images", "masks"):
            (tmp_path / "ds" / kind).mkdir(parents=True, exist_ok=True)
        mask = np.zeros(size, np.uint8)
        mask[4:9, 4:9] = 1
        Image.fromarray(mask).save(tmp_path / "ds" / "masks" / f"i{k}.png")
        Image.fromarray(mask * 100).save(tmp_path / "ds" / "images" / f"i{k}.png")
    result = _invoke("train", "--arch", "unet", "--data", tmp_path / "ds", "--out", tmp_path / "run", "--quiet",
                     "--set", "model.options.base_width=4", "--set", "train.batch_size=2", "--set", "train.iterations=2")
    _one_line(result, "20x24", "data.resize", "crop_size")


def test_corrupt_cache_file_names_it(tmp_path, monkeypatch):
    from segbench.data import DataConfig, DataError, load_data

    monkeypatch.setenv("SEGBENCH_HOME", str(tmp_path / "home"))
    for k in range(4):
        for kind in ("images", "masks"):
            (tmp_path / "ds" / kind).mkdir(parents=True, exist_ok=True)
        mask = np.zeros((8, 8), np.uint8)
        mask[2:5, 2:5] = 1
        Image.fromarray(mask).save(tmp_path / "ds" / "masks" / f"i{k}.png")
        Image.fromarray(mask * 100).save(tmp_path / "ds" / "images" / f"i{k}.png")
    data = load_data(DataConfig(source=str(tmp_path / "ds")))
    store = data.splits["train"].store
    from segbench.data.cache import CacheStore

    for damage in (b"garbage", b""):  # issue 26: an emptied slice file ended in a bare "Aborted!"
        (store.folder / "000000_image.npy").write_bytes(damage)
        with pytest.raises(DataError, match="000000_image.npy is damaged"):  # read while damaged: named
            CacheStore(store.folder).image(0, 0)
        # a new load (check, train) never trusts it: the cache is rebuilt from the data
        assert load_data(DataConfig(source=str(tmp_path / "ds"))).splits["train"].store.image(0, 0).shape == (1, 8, 8)
    (store.folder / "meta.json").write_text("{ not json")
    assert load_data(DataConfig(source=str(tmp_path / "ds"))).num_classes == 2  # rebuilt


def test_full_or_read_only_disk_is_one_line_naming_the_file():
    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES):
        message = _message(OSError(code, "No space left on device", "/runs/x/.last.pt.tmp"))
        assert message and "/runs/x/.last.pt.tmp" in message and "\n" not in message


def test_debug_keeps_the_traceback(tiny_env, tmp_path):
    result = _invoke("train", "--out", tmp_path / "run", *TINY, "--set", "train.iterations=0",
                     env={"SEGBENCH_DEBUG": "1"})
    assert result.exit_code == 1 and result.exception is not None and not isinstance(result.exception, SystemExit)


def test_offline_imagenet_weights_name_the_file_and_where_to_put_it(tiny_env, tmp_path):
    env = {"SEGBENCH_OFFLINE": "1", "SEGBENCH_HOME": str(tmp_path / "home")}
    args = [a if a != "tiny" else "deeplabv3plus" for a in TINY]
    line = _one_line(_invoke("train", "--out", tmp_path / "run", *args, "--set", "model.options.encoder=resnet18",
                             "--set", "model.pretrained=imagenet", env=env), "resnet18")
    assert str(tmp_path / "home" / "weights") in line  # the exact path to put the file at
    assert not (tmp_path / "run" / "last.pt").exists()
