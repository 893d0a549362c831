"""The house rules of what may import what (``segbench/house_rules.py`` states them, once), checked on the source:
every ``import`` of a segbench module, at module level or inside a function, counts."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import segbench

from segbench.house_rules import ALLOWED, LEAVES

ROOT = Path(segbench.__file__).parent
LAYERS = sorted(ALLOWED, key=len, reverse=True)  # the most specific layer first


def layer(module: str) -> str:
    if module in LEAVES:
        return module
    return next(name for name in LAYERS if module == name or module.startswith(name + "."))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def segbench_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "segbench":
                found |= {f"segbench.{a.name}" if f"segbench.{a.name}" in MODULES else "segbench" for a in node.names}
            elif node.module.startswith("segbench."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name == "segbench" or a.name.startswith("segbench.")}
    return found


FILES = sorted(ROOT.rglob("*.py"))
MODULES = {module_name(p) for p in FILES}


def graph() -> dict[str, set[str]]:
    """Layer -> the layers its modules import."""
    edges: dict[str, set[str]] = {}
    for path in FILES:
        source = layer(module_name(path))
        for target in segbench_imports(path):
            edges.setdefault(source, set()).add(layer(target))
    return edges


def violations(edges: dict[str, set[str]]) -> list[str]:
    out = []
    for source, targets in edges.items():
        allowed = (LEAVES - {source}) if source in LEAVES else set(ALLOWED[source]) | LEAVES
        out += [f"{source} imports {t}" for t in sorted(targets - allowed - {source})]
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle between layers (depth-first search; each reported once, from its smallest name)."""
    found = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == path[0]:
                found.append(path + [nxt])
            elif nxt not in path and nxt > path[0]:
                visit(nxt, path + [nxt])

    for start in sorted(edges):
        visit(start, [start])
    return [c for c in found if c[0] != c[1]]


def test_every_layer_imports_only_what_the_rules_allow():
    assert violations(graph()) == []


def test_no_import_cycles_between_layers():
    assert cycles(graph()) == []


def test_nothing_imports_the_commands_but_the_cli():
    importers = {layer(module_name(p)) for p in FILES if any(t.startswith("segbench.commands") for t in segbench_imports(p))}
    assert importers <= {"segbench.cli", "segbench.commands"}


def test_the_checks_catch_a_breach():
    # The same functions on a graph with a forbidden edge and a cycle: they must see both.
    edges = graph()
    edges["segbench.models"] = edges.get("segbench.models", set()) | {"segbench.checkpoints"}
    assert "segbench.models imports segbench.checkpoints" in violations(edges)
    assert ["segbench.checkpoints", "segbench.models", "segbench.checkpoints"] in cycles(edges)


def test_the_report_and_its_records_import_no_torch():
    modules = ["segbench.bench.protocol.record", "segbench.bench.report.columns", "segbench.bench.report.results",
               "segbench.bench.report.findings", "segbench.bench.report.render", "segbench.bench.report.evidence",
               "segbench.bench.report.verdict", "segbench.bench.report.calibrate", "segbench.bench.report.review",
               "segbench.comparison", "segbench.stats", "segbench.jsonio"]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_ray_is_imported_only_by_the_ray_launcher():
    # `segbench run --launcher local` (the default) and `import segbench` never need Ray (an optional extra).
    modules = ["segbench", "segbench.cli", "segbench.commands.run", "segbench.bench.protocol.sweep",
               "segbench.bench.protocol.launch_ray", "segbench.bench.protocol.review_input",
               "segbench.bench.report.review"]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
