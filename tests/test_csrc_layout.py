"""csrc/ layout (docs/design.md, backends): each op's schemas are defined once, device-neutrally, in
csrc/<op>/<op>.cpp; its device files (<op>_cpu.cpp, <op>_cuda.cu) only register kernels
(TORCH_LIBRARY_IMPL) for ops that file defines, so no device file depends on another's schemas."""

import re
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "csrc"
DEVICE_FILES = sorted([*CSRC.rglob("*_cpu.cpp"), *CSRC.rglob("*.cu")])
DEFINES = re.compile(r"\bTORCH_LIBRARY(_FRAGMENT)?\s*\(|\.def\s*\(")
SCHEMA_NAME = re.compile(r'\.def\(\s*"(\w+)\(')
IMPL_NAME = re.compile(r'\.impl\(\s*"(\w+)"')


def code(path: Path) -> str:
    """The file's text without its // comments (which may name the macros)."""
    return re.sub(r"//[^\n]*", "", path.read_text())


def test_every_op_folder_has_device_files():
    ops = {
        "conv3x3",
        "deform_conv",
        "local_sliced_wasserstein",
        "patch_match",
        "sliced_wasserstein",
    }
    assert {p.parent.name for p in DEVICE_FILES} == ops


@pytest.mark.parametrize("path", DEVICE_FILES, ids=lambda p: p.name)
def test_device_file_only_implements_ops_of_its_schema_file(path):
    text = code(path)
    schema_file = path.parent / f"{path.parent.name}.cpp"
    assert not DEFINES.search(text), f"{path.name} defines ops: schemas go in {schema_file.name}"
    implemented = set(IMPL_NAME.findall(text))
    defined = set(SCHEMA_NAME.findall(code(schema_file)))
    assert implemented, f"{path.name} registers no kernel"
    assert implemented <= defined, f"{schema_file.name} does not define {implemented - defined}"
