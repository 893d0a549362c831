from segbench.bench.protocol.profiles import get_profile


def test_gpu_profiles_say_what_gpu_memory_they_expect():
    # Printed in the review's settings, so a paper-profile run can be placed on a GPU that fits it.
    assert get_profile("paper").settings()["expected_gpu_memory"].startswith("about 30 GB in bf16/fp16")
    assert "GB" in get_profile("standard").settings()["expected_gpu_memory"]
    assert get_profile("quick").settings()["expected_gpu_memory"].startswith("n/a")
