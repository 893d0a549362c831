"""The report's warning when its timing and memory figures come from more than one device model (runs
spread over a Ray cluster of several GPU models, or a Speed section measured elsewhere than the runs).
The whole report with such rows: tests/bench/test_launch_ray.py."""

from segbench.bench.report.devices import mixed_devices_warning


def test_the_device_warning_counts_the_speed_sections_device():
    rows = [{"arch": "unet", "seed": s, "status": "ok", "device_name": "NVIDIA L4", "host": f"n{s}",
             "run_dir": f"/out/unet-s{s}-0123456789"} for s in (0, 1)]
    assert mixed_devices_warning(rows) is None  # one model on two hosts: comparable
    failed = {"arch": "segformer", "seed": 0, "status": "failed", "device_name": "NVIDIA T4"}
    assert mixed_devices_warning(rows + [failed]) is None  # a failed run measured nothing
    rows[0]["throughput_device"] = "AMD EPYC 7B13"  # the Speed section ran on the driver's CPU
    warning = mixed_devices_warning(rows)
    assert "2 device models" in warning and "NVIDIA L4: unet-s0 on n0, unet-s1 on n1" in warning
    assert "The Throughput column and the Speed section were measured on AMD EPYC 7B13" in warning
