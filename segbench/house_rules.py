"""The house rules of what may import what: written once, here. ``tests/test_import_rules.py`` walks every
``import`` of a segbench module (at module level or inside a function) and fails on an edge these tables
do not allow, or on a cycle between layers; ``docs/development.md`` prints them.

A module belongs to the most specific layer whose name prefixes it. Reading the tables: ``models`` imports
only torch; ``checkpoints`` reads and converts weights for ``models``; the ``engine`` trains, evaluates and
infers with ``models``, ``checkpoints``, ``data`` and ``config``; ``export`` adds ONNX on top of the engine;
``bench.measure`` times and counts, ``bench.protocol`` plans and runs the review and gathers what its report
reads into typed records; ``bench.report`` turns those records into the report and imports no torch (the test
checks it); ``commands`` may import anything and nothing but the CLI imports them.
"""

from __future__ import annotations

__all__ = ["LEAVES", "LOWER", "ALLOWED"]

# Standard library / numpy / scipy only (the run records import only jsonio): anyone may use them.
LEAVES: frozenset[str] = frozenset({
    "segbench.jsonio",  # the one strict, atomic JSON writer
    "segbench.run_files",  # the one check before any write (segbench never writes through what it did not create)
    "segbench.metric_defs",  # every metric's name, unit, direction and help: the one vocabulary
    "segbench.stats",  # bootstrap, paired tests, Holm, ranking robustness
    "segbench.comparison",  # the comparison the verdict makes
    "segbench.house_rules",  # this file
    "segbench.env_settings",  # the numbers read from SEGBENCH_* variables, with one error
    "segbench.bench.protocol.record",  # the typed run records (and the review's input) the report reads
})
LOWER: frozenset[str] = frozenset({"segbench.models", "segbench.checkpoints", "segbench.data", "segbench.config"})
# Layer -> the layers it may import (besides itself and the leaves).
ALLOWED: dict[str, frozenset[str]] = {
    "segbench.models": frozenset(),
    "segbench.checkpoints": frozenset({"segbench.models"}),
    "segbench.data": frozenset(),
    "segbench.config": frozenset({"segbench.data"}),
    "segbench.engine": LOWER,
    "segbench.export": LOWER | {"segbench.engine"},
    "segbench.bench.measure": LOWER | {"segbench.engine", "segbench.export"},
    "segbench.bench.protocol": LOWER | {"segbench.engine", "segbench.export", "segbench.bench.measure"},
    "segbench.bench.report": frozenset(),  # and the leaves: it reads the typed run records
    "segbench.commands": LOWER | {"segbench", "segbench.engine", "segbench.export", "segbench.bench", "segbench.bench.measure",
                                  "segbench.bench.protocol", "segbench.bench.report"},
    "segbench.cli": frozenset({"segbench.commands"}),
    "segbench.__main__": frozenset({"segbench.cli"}),
    "segbench": frozenset({"segbench.models", "segbench.checkpoints"}),
    "segbench.bench": frozenset(),
}
