"""Issue 15, item 1: `segbench train` deletes nothing it cannot prove it wrote."""

import json

from click.testing import CliRunner

from segbench.cli import main
from segbench.engine.run_folder import MARKER, claim, is_run_folder

TINY = ["--arch", "tiny", "--quiet", "--set", "train.iterations=4", "--set", "train.val_interval=2",
        "--set", "train.batch_size=4", "--set", "train.device=cpu", "--set", "eval.test_at_end=false"]


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_foreign_folder_is_refused_and_left_untouched(tiny_env, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("config.yaml", "eval_final.json", "metrics.json", "best.pt", "log.jsonl", "data_info.json"):
        (project / name).write_text(f"the user's own {name}\n")
    before = _snapshot(project)
    result = _invoke("train", "--out", project, *TINY)
    assert result.exit_code == 1, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(project) in lines[0] and "holds no segbench run" in lines[0]
    assert _snapshot(project) == before  # nothing deleted, nothing added
    # --overwrite cannot prove ownership either
    result = _invoke("train", "--out", project, "--overwrite", *TINY)
    assert result.exit_code == 1 and _snapshot(project) == before


def test_overwrite_deletes_only_the_runs_own_files(tiny_env, tmp_path):
    run = tmp_path / "run"
    assert _invoke("train", "--out", run, *TINY).exit_code == 0
    assert is_run_folder(run) and (run / MARKER).is_file()
    result = _invoke("eval", run)
    assert result.exit_code == 0, result.output
    assert "eval_val.json" in json.loads((run / MARKER).read_text())["files"]
    (run / "notes.txt").write_text("mine")
    (run / "eval_mine.json").write_text("{}")  # a name like segbench's, but not written by it
    # resumes by default (the finished run returns its metrics), nothing deleted
    assert _invoke("train", "--out", run, *TINY).exit_code == 0
    assert (run / "eval_val.json").is_file()
    result = _invoke("train", "--out", run, "--overwrite", *TINY)
    assert result.exit_code == 0, result.output
    assert (run / "notes.txt").read_text() == "mine" and (run / "eval_mine.json").read_text() == "{}"
    assert not (run / "eval_val.json").exists()  # the run's own file from before the restart
    assert (run / "best.pt").is_file() and (run / "metrics.json").is_file()


def test_claim_refuses_foreign_files_but_accepts_an_empty_folder(tmp_path):
    (tmp_path / "a").mkdir()
    claim(tmp_path / "a")
    assert is_run_folder(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.txt").write_text("x")
    try:
        claim(tmp_path / "b")
    except ValueError as err:
        assert "holds no segbench run" in str(err)
    else:
        raise AssertionError("a foreign folder was claimed")


def test_a_rank_that_checks_while_rank_0_writes_the_marker_sees_a_new_run(tmp_path):
    # Under torchrun rank 0 claims the folder (the marker, written to a temporary and renamed) while the other
    # ranks check it: caught between the two, a rank saw only the temporary and refused the folder (seen in CI).
    import pytest

    from segbench.engine.run_folder import RunFolderError, open_for_training

    run = tmp_path / "run"
    run.mkdir()
    (run / f".{MARKER}.tmp").write_text("{")
    assert open_for_training(run, resume=True, is_main=False) is False
    (run / "x.txt").write_text("x")  # beside someone else's file it is still someone else's folder
    with pytest.raises(RunFolderError, match="holds no segbench run"):
        open_for_training(run, resume=True, is_main=False)


def test_starting_over_keeps_the_runs_inputs(tmp_path):
    # The sweep writes sweep_run.json for its worker, whose training then starts the run over: deleting the spec
    # there left finished review runs unrecognisable as such (`segbench run` no longer saw them).
    from segbench.engine.run_folder import open_for_training

    run = tmp_path / "run"
    claim(run, files=("bench.json", "spec.json"), inputs=("spec.json",))
    for name in ("bench.json", "spec.json", "metrics.json"):
        (run / name).write_text("{}")
    claim(run, files=("bench.json",))  # a later claim keeps what earlier ones declared
    assert open_for_training(run, resume=True) is False  # no last.pt: a fresh start
    assert sorted(p.name for p in run.iterdir()) == [MARKER, "spec.json"]
    assert json.loads((run / MARKER).read_text())["inputs"] == ["spec.json"]
