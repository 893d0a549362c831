"""A run computes with at most the CPUs it was given (``segbench.engine.threads``): SEGBENCH_THREADS, the
affinity mask or the container's quota, whichever says fewest; never more than torch's default."""

import pytest
import torch

from segbench.engine.threads import cap_threads, cpu_allotment


def test_the_allotment_is_the_fewest_cpus_any_limit_gives(tmp_path):
    none = tmp_path / "none"
    assert cpu_allotment({}, affinity={0, 1, 2, 3}, cgroup=none) == (4, "the CPUs this process may run on")
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "cpu.max").write_text("150000 100000\n")  # docker --cpus=1.5
    assert cpu_allotment({}, affinity={0, 1, 2, 3}, cgroup=tmp_path / "v2") == (2, "the container's CPU quota")
    assert cpu_allotment({}, affinity={0}, cgroup=tmp_path / "v2")[0] == 1
    (tmp_path / "max").mkdir()
    (tmp_path / "max" / "cpu.max").write_text("max 100000\n")
    assert cpu_allotment({}, affinity={0, 1}, cgroup=tmp_path / "max")[0] == 2
    (tmp_path / "v1" / "cpu").mkdir(parents=True)
    (tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "v1" / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_allotment({}, affinity={0, 1}, cgroup=tmp_path / "v1")[0] == 1
    assert cpu_allotment({"SEGBENCH_THREADS": "3"}, affinity={0}, cgroup=none) == (3, "SEGBENCH_THREADS")
    for bad in ("0", "two"):
        with pytest.raises(ValueError, match="SEGBENCH_THREADS"):
            cpu_allotment({"SEGBENCH_THREADS": bad}, affinity={0}, cgroup=none)


def test_cap_threads_only_lowers_the_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert cap_threads({"SEGBENCH_THREADS": "1"})[0] == 1 and torch.get_num_threads() == 1
        assert cap_threads({"SEGBENCH_THREADS": "8"})[0] == 1 and torch.get_num_threads() == 1  # never raised
    finally:
        torch.set_num_threads(before)
