"""Benchmarks: the review sweep behind ``segbench run`` and the speed benchmark behind ``segbench speed``.

The review (``segbench run``), in the order the data flows:

- ``profiles``: the protocols (``quick``, ``standard``, ``paper``) and their per-architecture options;
- ``sweep``: resolves and hashes every (architecture, seed) configuration, runs each in a worker
  process, resumes and skips finished runs; ``worker``: one run (measure, train, preview);
- ``measure``: parameters, FLOPs, latency, throughput, peak memory, the machine;
- ``results``: the flat results rows, aggregation over seeds, the Pareto front, CSV/JSON;
- ``findings``: sentences computed from the numbers; ``plots``: the figures;
- ``review`` and ``report``: assemble and render ``OUT/report/`` (HTML, Markdown).

The speed benchmark (``segbench speed``) lives in ``speed`` and its helpers.
"""
