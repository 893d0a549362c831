"""segbench's numeric environment variables: one parser, one error naming the variable."""

import pytest

from segbench.env_settings import env_seconds


def test_env_seconds_reads_defaults_and_refuses_with_the_name():
    assert env_seconds("SEGBENCH_X", 15.0, environ={}) == 15.0
    assert env_seconds("SEGBENCH_X", 15.0, environ={"SEGBENCH_X": " "}) == 15.0
    assert env_seconds("SEGBENCH_X", 15.0, environ={"SEGBENCH_X": "2.5"}) == 2.5
    assert env_seconds("SEGBENCH_X", 15.0, zero=True, environ={"SEGBENCH_X": "0"}) == 0.0
    for raw, zero in (("0", False), ("-1", True), ("soon", True), ("nan", False), ("inf", False)):
        with pytest.raises(ValueError, match=f"SEGBENCH_X='{raw}': expected"):
            env_seconds("SEGBENCH_X", 15.0, zero=zero, environ={"SEGBENCH_X": raw})
