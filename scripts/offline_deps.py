"""segbench's dependencies on a machine that cannot reach a package index (``scripts/gpu_check.sh``).

    python scripts/offline_deps.py check    [--wheelhouse DIR] [--extra onnx]
    python scripts/offline_deps.py install  [--wheelhouse DIR] [--extra onnx] [--online]
    python scripts/offline_deps.py download --dest DIR --python-version 3.12 --platform manylinux_2_28_x86_64 REQ...

``check`` says which of segbench's requirements (pyproject.toml: ``dependencies``, the named extras and
``[build-system] requires``, since segbench installs with ``--no-build-isolation``) this Python has, which
the wheel folder provides (with the requirements of those wheels, followed the same way), and which are
missing, then the ``make wheelhouse`` line that fetches the missing ones. ``install`` does the same,
stops there if anything is missing, else installs exactly the wheels it named (``--no-index --no-deps``)
and segbench itself (``--no-deps``). torch is never installed: the machine's own CUDA build is the point.
``--online`` lets pip fetch what is missing from its index instead (torch pinned where it is).
``download`` is ``make wheelhouse``: binary wheels for another machine's Python and platform.

Standard library, plus ``packaging`` (pip's own copy where it is missing): it runs on the machine's Python
before anything is installed.
"""

from __future__ import annotations

import argparse
import email.parser
import importlib.metadata
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.tags import sys_tags
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version
except ImportError:  # pip vendors it
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.tags import sys_tags
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename
    from pip._vendor.packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
NEVER_INSTALLED = "torch"


@dataclass(frozen=True)
class Project:
    """What pyproject.toml says segbench needs, and how to install it offline (``[tool.segbench.offline]``)."""

    requirements: list[Requirement]  # this check's: dependencies, the named extras, build-system requires
    declared: list[Requirement]  # every requirement pyproject.toml names, for their specifiers
    data_only: frozenset[str]  # installed without their own requirements: segbench only reads files they ship
    alternatives: dict[str, list[str]]  # other distributions that provide a requirement's module

    @classmethod
    def read(cls, root: Path, extras: list[str]) -> Project:
        data = tomllib.loads((root / "pyproject.toml").read_text())
        groups = data["project"]["optional-dependencies"]
        texts = data["project"]["dependencies"] + [r for e in extras for r in groups[e]] + data["build-system"]["requires"]
        every = texts + [r for group in groups.values() for r in group]
        offline = data.get("tool", {}).get("segbench", {}).get("offline", {})
        return cls([r for r in map(Requirement, texts) if r.marker is None or r.marker.evaluate({"extra": ""})],
                   list(map(Requirement, every)),
                   frozenset(map(canonicalize_name, offline.get("data-only", []))),
                   {canonicalize_name(k): v for k, v in offline.get("alternatives", {}).items()})

    def spec(self, text: str) -> str:
        """``nibabel`` -> ``nibabel>=5.0`` (pyproject's specifier); any other text unchanged."""
        for requirement in self.declared:
            if requirement.specifier and canonicalize_name(requirement.name) == canonicalize_name(text):
                return f"{requirement.name}{requirement.specifier}"
        return text


@dataclass(frozen=True)
class Wheel:
    name: str  # canonical
    version: Version
    path: Path

    def requirements(self) -> list[Requirement]:
        with zipfile.ZipFile(self.path) as archive:
            metadata = next(n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
            message = email.parser.Parser().parsestr(archive.read(metadata).decode())
        requirements = map(Requirement, message.get_all("Requires-Dist") or [])
        return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def compatible_wheels(folder: Path | None) -> dict[str, list[Wheel]]:
    """The wheels in ``folder`` this Python can install, by canonical name."""
    tags = set(sys_tags())
    found: dict[str, list[Wheel]] = {}
    for path in sorted(folder.glob("*.whl")) if folder else []:
        name, version, _, wheel_tags = parse_wheel_filename(path.name)
        if tags & set(wheel_tags):
            found.setdefault(name, []).append(Wheel(name, version, path))
    return found


def installed_version(name: str, alternatives: list[str]) -> tuple[str, str] | None:
    """(distribution, version) of ``name`` or of a distribution that stands in for it."""
    for candidate in [name, *alternatives]:
        try:
            return candidate, importlib.metadata.version(candidate)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@dataclass
class Plan:
    present: dict[str, str] = field(default_factory=dict)  # canonical name -> "numpy 2.1.3"
    from_wheelhouse: dict[str, Wheel] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # canonical name -> "onnx>=1.15 (needed by x)"
    missing_specs: list[str] = field(default_factory=list)


def make_plan(project: Project, wheelhouse: Path | None) -> Plan:
    """Follow segbench's requirements through what is installed, then through the wheel folder's wheels."""
    wheels = compatible_wheels(wheelhouse)
    plan = Plan()
    queue: list[tuple[Requirement, str | None]] = [(r, None) for r in project.requirements]
    while queue:
        requirement, needed_by = queue.pop(0)
        name = canonicalize_name(requirement.name)

        def satisfies(version: Version | str) -> bool:
            return requirement.specifier.contains(version, prereleases=True)

        found = installed_version(requirement.name, project.alternatives.get(name, []))
        if found and satisfies(found[1]):
            plan.present.setdefault(name, f"{found[0]} {found[1]}")
            continue
        if name in plan.from_wheelhouse and satisfies(plan.from_wheelhouse[name].version):
            continue
        candidates = [w for w in wheels.get(name, []) if satisfies(w.version)]
        if candidates and name not in plan.from_wheelhouse and name != NEVER_INSTALLED:
            wheel = plan.from_wheelhouse[name] = max(candidates, key=lambda w: w.version)
            if name not in project.data_only:
                queue += [(r, wheel.name) for r in wheel.requirements()]
            continue
        why = f"{found[0]} {found[1]} installed" if found else "not installed"
        if name == NEVER_INSTALLED:
            why += "; never installed here: PYTHON must be the Python that has the machine's PyTorch"
        elif name not in plan.missing:
            plan.missing_specs.append(str(requirement))
        plan.missing.setdefault(name, f"{requirement} ({f'needed by {needed_by}; ' if needed_by else ''}{why})")
    return plan


def target_platform() -> str:
    """This machine as pip's ``--platform`` names it, e.g. ``manylinux_2_35_x86_64``."""
    libc, version = platform.libc_ver()
    if libc == "glibc" and version:
        major, minor = version.split(".")[:2]
        return f"manylinux_{major}_{minor}_{platform.machine()}"
    return next(t.platform for t in sys_tags() if t.platform != "any")


def report(project: Project, plan: Plan, wheelhouse: Path | None, extras: list[str]) -> None:
    where = f"Python {platform.python_version()} ({sys.executable})"
    sources = ", ".join(["dependencies", *(f"extra {e}" for e in extras), "build-system requires"])
    print(f"segbench's requirements (pyproject.toml: {sources}) on {where}:")
    print("  present: " + (", ".join(plan.present.values()) or "none"))
    if plan.from_wheelhouse:
        wheels = [f"{w.path.name}" + (" (without its dependencies: data only)" if n in project.data_only else "")
                  for n, w in plan.from_wheelhouse.items()]
        print(f"  from {wheelhouse}: " + ", ".join(wheels))
    print("missing: " + (", ".join(plan.missing.values()) or "none"))
    if plan.missing:
        # The same binary wheels for this Python and platform, fetched where PyPI is reachable.
        packages = shlex.quote(" ".join(plan.missing_specs))
        print("  the wheel folder for them, built where PyPI is reachable and carried here as wheelhouse/:\n"
              f"  make wheelhouse PY_VERSION={sys.version_info.major}.{sys.version_info.minor} "
              f"PLATFORM={target_platform()} WHEELHOUSE_PACKAGES={packages}")
    sys.stdout.flush()


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    print("$ " + shlex.join(command[2:]), flush=True)
    subprocess.run(command, check=True)


def install(project: Project, plan: Plan, online: bool) -> int:
    if NEVER_INSTALLED in plan.missing or (plan.missing and not online):
        print("install: stopped before installing anything (give WHEELHOUSE=DIR, or ONLINE=1 to let pip fetch them)")
        return 1
    if plan.from_wheelhouse:
        pip("install", "--no-index", "--no-deps", *(str(w.path) for w in plan.from_wheelhouse.values()))
    if plan.missing:
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as pins:
            torch = installed_version(NEVER_INSTALLED, [])
            pins.write(f"torch=={torch[1]}\n" if torch else "")  # pip may add packages, never change torch
            pins.flush()
            pip("install", "--constraint", pins.name, *plan.missing_specs)
    pip("install", "--no-index", "--no-deps", "--no-build-isolation", "--quiet", "--editable", str(ROOT))
    return 0


def expand_platform(name: str) -> list[str]:
    """pip matches ``--platform`` exactly: a glibc 2.N machine also takes the older manylinux tags."""
    match = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", name)
    if not match:
        return [name]
    major, minor, arch = int(match[1]), int(match[2]), match[3]
    older = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)] if major == 2 else [name]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return older + [f"{legacy[m]}_{arch}" for m in legacy if major == 2 and m <= minor]


def download(project: Project, dest: Path, python_version: str, platform_name: str, packages: list[str]) -> int:
    specs = [project.spec(p) for p in packages]
    platforms = [option for p in expand_platform(platform_name) for option in ("--platform", p)]
    dest.mkdir(parents=True, exist_ok=True)
    # --no-deps: what the wheels themselves need is usually on a PyTorch image already; gpu_check.sh's check
    # follows their requirements there and names any that is not.
    pip("download", "--no-deps", "--only-binary=:all:", "--python-version", python_version, *platforms,
        "--dest", str(dest), *specs)
    wheels = sorted(dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    print(f"{dest}: {len(wheels)} wheels, {size / 1e6:.1f} MB: " + ", ".join(w.name for w in wheels))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["check", "install", "download"])
    parser.add_argument("packages", nargs="*", help="download: requirements (a bare name takes pyproject's specifier)")
    parser.add_argument("--wheelhouse", type=Path, help="a folder of wheels (make wheelhouse)")
    parser.add_argument("--extra", action="append", default=[], help="also an extra's requirements (repeatable)")
    parser.add_argument("--online", action="store_true", help="install: let pip fetch what is missing from its index")
    parser.add_argument("--dest", type=Path, default=Path("wheelhouse"))
    parser.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}")
    parser.add_argument("--platform", default=None, help="download: pip's platform tag [default: this machine's]")
    args = parser.parse_intermixed_args(argv)
    project = Project.read(ROOT, args.extra)
    if args.command == "download":
        if not args.packages:
            parser.error("download needs the requirements to fetch")
        return download(project, args.dest, args.python_version, args.platform or target_platform(), args.packages)
    if args.wheelhouse and not args.wheelhouse.is_dir():
        parser.error(f"--wheelhouse {args.wheelhouse}: no such folder")
    plan = make_plan(project, args.wheelhouse)
    report(project, plan, args.wheelhouse, args.extra)
    if args.command == "check":
        return 1 if plan.missing else 0
    return install(project, plan, args.online)


if __name__ == "__main__":
    sys.exit(main())
