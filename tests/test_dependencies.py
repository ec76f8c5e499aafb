"""The torch range of pyproject.toml holds both the torch running the tests and the versions CI pins
(.ci/constraints.txt), so CI always tests a supported release."""

from pathlib import Path

import pytest
import torch
import torchvision
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip(
    "tomllib", reason="tomllib is in the standard library from Python 3.11"
)
ROOT = Path(__file__).resolve().parents[1]


def _ranges() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {r.name: r for r in map(Requirement, project["dependencies"])}


def test_torch_and_torchvision_are_ranges_that_hold_the_running_versions():
    ranges = _ranges()
    for name, module in (("torch", torch), ("torchvision", torchvision)):
        spec = ranges[name].specifier
        assert not any(s.operator == "==" for s in spec), f"{name} must be a range, not a pin"
        assert Version(module.__version__).public in spec, (name, module.__version__, str(spec))


def test_ci_pins_lie_in_the_supported_ranges():
    ranges = _ranges()
    lines = (ROOT / ".ci" / "constraints.txt").read_text().splitlines()
    pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    assert {p.name for p in pins} >= {"torch", "torchvision"}
    for pin in pins:
        (exact,) = pin.specifier
        assert exact.operator == "==" and exact.version in ranges[pin.name].specifier, str(pin)
