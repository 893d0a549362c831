"""Benchmarks: the review behind ``segbench run`` and the speed benchmark behind ``segbench speed``.

- ``measure``: every measured number besides accuracy, each with one producer (timing harness, FLOPs,
  latency, memory, speed against peers and the machine's matmul rate);
- ``protocol``: the profiles, the sweep of runs and its workers, the typed records runs leave, and what the
  report of a plan reads (``review_input``);
- ``report``: columns, tables, findings, plots, HTML and Markdown from those records, and ``review``, which
  assembles ``OUT/report/`` (no torch).
"""
