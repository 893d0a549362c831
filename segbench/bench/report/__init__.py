"""The review report, from typed run records; imports no torch.

- ``columns``: the one list of columns both tables (comparison and speed) are drawn from;
- ``results``: the flat results rows, aggregation over seeds, the Pareto front, CSV/JSON;
- ``findings``: sentences computed from the numbers; ``plots``: the figures;
- ``render``: ``index.html`` and ``report.md``;
- ``review``: ``write_review``, the pipeline that assembles ``OUT/report/`` from a ``ReviewInput``.
"""
