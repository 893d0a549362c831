from pathlib import Path

from click.testing import CliRunner

import segbench
from segbench.commands.models import models

DOC = Path(__file__).resolve().parents[1] / "docs" / "architectures.md"


def test_models_lists_every_architecture_with_counts():
    result = CliRunner().invoke(models, ["--size", "64", "64"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()[3:]}
    assert set(lines) == set(segbench.list_models())
    # FCN-8s at 21 classes: 134,489,759 parameters -> "134.49".
    assert " 134.49 " in lines["fcn8s"]
    assert " 31.04 " in lines["unet"]


def test_architectures_doc_is_in_sync_with_registry():
    result = CliRunner().invoke(models, ["--markdown"])
    assert result.exit_code == 0, result.output
    assert DOC.read_text() == result.output, "regenerate: segbench models --markdown > docs/architectures.md"
