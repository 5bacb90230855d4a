"""constraints.txt pins the numeric stack the committed results were computed with; the install
scripts use it. The environment running the tests must be that stack (else the recorded
fingerprint and the committed digests cannot be expected to hold), and every pin must lie in
pyproject.toml's range (else `pip install -c constraints.txt -e .` cannot resolve)."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

from tests.helpers import REPO_ROOT

CONSTRAINTS = REPO_ROOT / "constraints.txt"


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][A-Za-z0-9.]*)", line).groups()
            pins[name.lower()] = version
    return pins


def test_the_install_scripts_use_the_constraints():
    for script in ("scripts/main.sh", "scripts/test.sh"):
        installs = [line for line in (REPO_ROOT / script).read_text().splitlines()
                    if "pip install" in line and "-e " in line and not line.lstrip().startswith("#")]
        assert installs and all("-c constraints.txt" in line for line in installs), (script, installs)


def test_the_environment_has_the_pinned_numeric_stack():
    pins = _pins()
    assert {"numpy", "scipy", "pandas", "numba", "llvmlite", "torch"} <= set(pins), pins
    installed = {name: Version(importlib.metadata.version(name)).public for name in pins}
    assert installed == pins, f"installed {installed}, pinned {pins}: reinstall with `bash scripts/test.sh`"


def test_every_pin_lies_in_pyprojects_range():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    ranges = {Requirement(r).name.lower(): Requirement(r).specifier for r in project["dependencies"]}
    pins = _pins()
    direct = {name: version for name, version in pins.items() if name in ranges}
    assert {"numpy", "scipy", "pandas", "numba", "torch", "gymnasium", "qpth", "matplotlib"} <= set(direct)
    outside = {name: (version, str(ranges[name])) for name, version in direct.items()
               if not ranges[name].contains(version)}
    assert not outside, outside
    # the control: a version outside a range is seen
    assert not ranges["numpy"].contains("2.0.0")
