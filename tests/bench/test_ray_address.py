"""Issue 26 item 7: an unreachable ``--ray-address`` fails within a stated timeout, in one line naming it
(Ray's own connect retried for minutes, printing warnings)."""

import time

import pytest

from segbench.bench.protocol.launch_ray import LauncherError, RayLauncher, RayOptions


@pytest.mark.parametrize("address", ["127.0.0.1:1", "notahost.invalid:6379"])
def test_an_unreachable_ray_address_fails_fast_naming_it(address, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_RAY_CONNECT_TIMEOUT_S", "2")
    launcher = RayLauncher(say=lambda message: None, ray_address=address)
    started = time.perf_counter()
    with pytest.raises(LauncherError) as caught:
        launcher.connect([], tmp_path)
    assert time.perf_counter() - started < 10
    message = str(caught.value)
    assert address in message and "within 2 s" in message and "\n" not in message
