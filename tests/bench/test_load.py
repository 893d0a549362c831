"""The machine's load during a measurement: other processes' CPU time, and the load average."""

from segbench.bench.measure.load import CpuTimes, machine_load, watch_load


def test_other_processes_cpu_is_the_busy_time_less_our_own():
    # 2 s on 2 CPUs (4 CPU-seconds): 3 busy, 1 of them ours, so the others used 2 CPU-seconds = 1 CPU.
    before, after = CpuTimes(busy=100, total=400, own=10), CpuTimes(busy=103, total=404, own=11)
    load = machine_load(before, after, cpus=2, load_1min=1.5)
    assert load.other_cpus == 1.0 and load.busy
    assert load.describe() == ("machine busy: load average 1.5 on 2 CPUs, other processes used 1.0 CPUs "
                               "during the measurement")
    assert load.record()["machine_busy"] is True and load.record()["machine_other_cpus"] == 1.0


def test_our_own_threads_do_not_make_the_machine_busy():
    before, after = CpuTimes(busy=100, total=400, own=10), CpuTimes(busy=104, total=404, own=14)
    load = machine_load(before, after, cpus=2, load_1min=2.0)
    assert load.other_cpus == 0.0 and not load.busy and load.describe().startswith("machine quiet")


def test_without_cpu_times_the_load_average_decides():
    assert machine_load(None, None, cpus=4, load_1min=3.5).busy
    assert not machine_load(None, None, cpus=4, load_1min=2.5).busy
    assert machine_load(None, None, cpus=4, load_1min=2.5).other_cpus is None


def test_watch_load_reads_this_machine():
    with watch_load() as watch:
        sum(range(10_000))
    assert watch.load is not None and watch.load.cpus >= 1
    assert watch.load.other_cpus is None or watch.load.other_cpus >= 0
