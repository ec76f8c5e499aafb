"""What the compiler made of every GPU kernel, without a GPU: registers, spills, vector loads, tensor cores.

    python -m benchmarks.static_evidence [--arch 90 80] [--only deform_conv patch_match ...] [--json F]
    python -m benchmarks.static_evidence --ir-check   # Triton front end under older Tritons' rules

CUDA C++: each ``csrc/<op>/<op>_cuda.cu`` is compiled for device code only (``nvcc -cubin``, the
extension's flags, ``-Xptxas -v``). Triton: each kernel in ``TRITON_TARGETS`` is compiled with
``triton.compile`` for ``GPUTarget("cuda", arch, 32)``, its PTX assembled again by Triton's bundled
``ptxas -v`` for the resource report. The machine code of both is disassembled with Triton's bundled
``cuobjdump --dump-sass``. One row per kernel and architecture:

* ``regs``: registers per thread; ``spill``: spill store + load bytes; ``stack``: stack frame bytes
  (local memory). The house rule is 0 spill and 0 stack for every kernel.
* ``LDG.128`` / ``STG.128``: 128-bit global loads / stores in the SASS (the vector loads that a
  channels-last gather should use); ``LDG``: all global loads, for scale.
* ``HMMA`` / ``HGMMA``: tensor-core instructions (warp-level mma / Hopper warpgroup mma).

``--ir-check`` only builds each Triton target's IR, under the ``tl.dot`` shape rule of Triton before
3.8 (K >= 16: an H200 with Triton 3.6 rejected the K = 8 tiles that 3.8 compiles), in seconds.

Counts are static (instructions in the binary, not executed). Needs nvcc (``CUDA_HOME``, default
/usr/local/cuda) for the CUDA rows and the ``triton`` package for the rest; no GPU.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def nvcc_path() -> Path:
    """nvcc of the CUDA toolkit at ``CUDA_HOME`` (default /usr/local/cuda)."""
    return Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"


def _triton_bin(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


@dataclass
class Row:
    """The compiler's evidence for one kernel on one architecture."""

    op: str
    source: str  # "cuda" or "triton"
    kernel: str
    arch: str
    regs: int = -1
    spill: int = -1  # spill store + spill load bytes
    stack: int = -1
    ldg128: int = 0
    stg128: int = 0
    ldg: int = 0
    hmma: int = 0
    hgmma: int = 0


# ---------------------------------------------------------------- reading the compiler's output

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def parse_ptxas(text: str) -> dict[str, dict[str, int]]:
    """``ptxas -v`` output -> {mangled kernel name: {"regs", "spill", "stack"}}."""
    found: dict[str, dict[str, int]] = {}
    name = None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            name = m.group(1)
            found[name] = {"regs": -1, "spill": -1, "stack": -1}
        elif name and (m := _PROPS.search(line)):
            found[name]["stack"] = int(m.group(1))
            found[name]["spill"] = int(m.group(2)) + int(m.group(3))
        elif name and (m := _REGS.search(line)):
            found[name]["regs"] = int(m.group(1))
    return found


def parse_sass(text: str) -> dict[str, dict[str, int]]:
    """``cuobjdump --dump-sass`` output -> {mangled kernel name: instruction counts}."""
    counts: dict[str, dict[str, int]] = {}
    current = None
    for line in text.splitlines():
        if m := re.search(r"Function : (\S+)", line):
            current = counts.setdefault(
                m.group(1), {"ldg128": 0, "stg128": 0, "ldg": 0, "hmma": 0, "hgmma": 0}
            )
            continue
        if current is None or not re.search(r"/\*[0-9a-f]{4,}\*/", line):
            continue
        instr = line.split("*/", 1)[1]
        if re.search(r"\bLDG\.E\b[.\w]*\.128\b", instr):
            current["ldg128"] += 1
        if re.search(r"\bSTG\.E\b[.\w]*\.128\b", instr):
            current["stg128"] += 1
        current["ldg"] += bool(re.search(r"\bLDG\b", instr))
        current["hmma"] += bool(re.search(r"\bHMMA\b", instr))
        current["hgmma"] += bool(re.search(r"\bHGMMA\b", instr))
    return counts


def _demangle(names: list[str]) -> dict[str, str]:
    try:
        out = subprocess.run(
            ["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}
    # "void (anonymous namespace)::forward_kernel<float, 3>(float const*, ...)"
    #   -> "forward_kernel<float, 3>"
    short = []
    for d in out:
        d = d.replace("(anonymous namespace)::", "")
        d = re.sub(r"^void ", "", d.split("(")[0])
        short.append(d.split("::")[-1])
    return dict(zip(names, short))


def _rows(op, source, arch, ptxas_text, sass_text, names=None) -> list[Row]:
    resources, sass = parse_ptxas(ptxas_text), parse_sass(sass_text)
    names = names or _demangle(sorted(resources))
    rows = []
    for mangled, res in sorted(resources.items()):
        rows.append(
            Row(
                op,
                source,
                names.get(mangled, mangled),
                f"sm_{arch}",
                **res,
                **sass.get(mangled, {}),
            )
        )
    return rows


# ---------------------------------------------------------------- CUDA C++ (csrc/<op>/<op>_cuda.cu)


def cuda_rows(op: str, arch: str, workdir: Path) -> list[Row]:
    """Compile csrc/<op>/<op>_cuda.cu for sm_<arch> (device code only) and read the evidence."""
    from torch.utils.cpp_extension import include_paths

    from dzsr_kernels._ext import EXTRA_CUDA_CFLAGS

    source = ROOT / "csrc" / op / f"{op}_cuda.cu"
    cubin = workdir / f"{op}_sm{arch}.cubin"
    includes = [f"-I{p}" for p in include_paths(device_type="cuda")] + [f"-I{ROOT / 'csrc'}"]
    cmd = [str(nvcc_path()), "-cubin", f"-arch=sm_{arch}", "-std=c++20", "-Xptxas", "-v"]
    cmd += EXTRA_CUDA_CFLAGS + includes + [str(source), "-o", str(cubin)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source} for sm_{arch}:\n{proc.stderr[-3000:]}")
    sass = subprocess.run(
        [_triton_bin("cuobjdump"), "--dump-sass", str(cubin)], capture_output=True, text=True
    )
    return _rows(op, "cuda", arch, proc.stderr + proc.stdout, sass.stdout)


# ---------------------------------------------------------------- Triton


@dataclass
class TritonTarget:
    """One Triton kernel compiled with one specialisation: argument types and constexpr values."""

    op: str
    module: str  # dzsr_kernels.<op>.triton_kernel
    kernel: str  # attribute name of the @triton.jit function
    label: str  # what this specialisation is (shown in the table)
    types: dict  # argument name -> Triton type string ("*fp32", "i32", ...)
    constexprs: dict  # argument name -> value (module constants named as "module:NAME")
    # triton.compile options (num_warps), values as constexprs, or {"sm_90": v, "default": v} where
    # the launch picks by architecture
    options: dict = field(default_factory=dict)
    # arguments a launch specialises as divisible by 16 (torch's allocations are 16-byte aligned, so
    # Triton marks tensor pointers so; int arguments when their value is a multiple of 16)
    divisible16: tuple = ()


def _ints(*names):
    return {n: "i32" for n in names}


_DC = "dzsr_kernels.deform_conv.triton_kernel"
_PM = "dzsr_kernels.patch_match.triton_kernel"
_SW = "dzsr_kernels.sliced_wasserstein.triton_kernel"
_DC_FWD_INTS = _ints("C", "C_out", "H", "W", "c_in_g", "c_out_g", "blocks_per_group")


def _dc_forward(label, dt, affine, depthwise, mma=f"{_DC}:FMA", cl=False):
    """The forward as ``triton_kernel.forward`` launches it; ``mma`` names an MMA mode (FMA: the
    outer-product path, BLOCK_C 16; else the tensor-core tiles of 64 out x 32 in channels); ``cl``:
    channels-last x and out (C = 64, which Triton's specialisation sees as a multiple of 16)."""
    ptr = f"*{dt}"
    types = dict(x_ptr=ptr, geom_ptr=ptr, w_ptr=ptr, bias_ptr=ptr, out_ptr=ptr, **_DC_FWD_INTS)
    consts = dict(K=3, AFFINE=affine, DEPTHWISE=depthwise, HAS_BIAS=True, CL=cl, ACC="tl:float32")
    if cl and depthwise:  # C_out == C: a launch specialises c_out_g == 1 as a constant
        consts["c_out_g"] = 1
    fma = mma == f"{_DC}:FMA"
    block_ci = 1 if fma else (16 if "SPLIT" in mma else 32)
    consts.update(MMA=mma, BLOCK_C=16 if fma else 64, BLOCK_CI=block_ci)
    consts.update(BLOCK_P=f"{_DC}:BLOCK_P")
    warps = {"sm_90": f"{_DC}:HOPPER_FORWARD_WARPS", "default": 4}  # as triton_kernel.forward
    warps = warps if fma else f"{_DC}:MMA_WARPS"
    aligned = ("x_ptr", "geom_ptr", "w_ptr", "bias_ptr", "out_ptr", "C", "C_out") if cl else ()
    return TritonTarget(
        "deform_conv", _DC, "_forward_kernel", label, types, consts, {"num_warps": warps}, aligned
    )


def _dc_dense_backward(label, dt, mma):
    """The dense input- and weight-gradient kernels on the tensor cores (64 x 64 channels, general
    offsets), with the tiles ``triton_kernel.backward`` picks."""
    ptr, acc_ptr = f"*{dt}", "*fp32"
    common = dict(K=3, AFFINE=False, CL=False, ACC="tl:float32", MMA=mma)
    input_grad = TritonTarget(
        "deform_conv",
        _DC,
        "_input_grad_kernel",
        f"{label}, input gradient",
        dict(go_ptr=ptr, x_ptr=ptr, geom_ptr=ptr, w_ptr=ptr, dx_ptr=acc_ptr, dgeom_ptr=ptr)
        | dict(dw_ptr=acc_ptr)
        | _ints("C", "C_out", "H", "W", "groups", "c_in_g", "c_out_g"),
        common | dict(DEPTHWISE=False, BLOCK_C=16, BLOCK_CO=16, BLOCK_P=f"{_DC}:BLOCK_P"),
        {"num_warps": f"{_DC}:MMA_WARPS" if "SPLIT" in mma else 4},
    )
    weight_grad = TritonTarget(
        "deform_conv",
        _DC,
        "_weight_grad_kernel",
        f"{label}, weight gradient",
        dict(go_ptr=ptr, x_ptr=ptr, geom_ptr=ptr, dw_ptr=acc_ptr)
        | _ints("N", "C", "C_out", "H", "W", "c_in_g", "c_out_g", "co_blocks", "ci_blocks")
        | _ints("chunk_pixels"),
        common | dict(BLOCK_CO=64, BLOCK_CI=32, BLOCK_P=f"{_DC}:WEIGHT_BLOCK_P"),
        {"num_warps": f"{_DC}:MMA_WARPS"},
    )
    return [input_grad, weight_grad]


_PM_TYPES = (
    dict(uq_ptr="*fp32", ur_ptr="*fp32", inv_q_ptr="*fp32", inv_r_ptr="*fp32")
    | dict(score_ptr="*fp32", index_ptr="*i64")
    | _ints("C", "Hq", "Wq", "Hr", "Wr", "hpq", "wpq", "hpr", "wpr")
    | _ints("q_tiles_x", "r_tiles_x", "r_tiles")
)


def _pm_match(label, fast):
    """The patch-match kernel as ``triton_kernel.match`` launches it (``fast``: split TF32)."""
    consts = dict(P=3, SPLIT_TF32=fast, QY=f"{_PM}:TILE_Y", QX=f"{_PM}:QUERY_TILE_X")
    consts.update(RY=f"{_PM}:TILE_Y", RX=f"{_PM}:REF_TILE_X")
    consts.update(BLOCK_C=f"{_PM}:BLOCK_C_FAST" if fast else f"{_PM}:BLOCK_C_EXACT")
    options = {"num_warps": f"{_PM}:NUM_WARPS"}
    return TritonTarget("patch_match", _PM, "_match_kernel", label, _PM_TYPES, consts, options)


TRITON_TARGETS: list[TritonTarget] = [
    _dc_forward("fp32 affine depthwise", "fp32", True, True),
    _dc_forward("fp32 dense", "fp32", False, False),
    _dc_forward("fp16 affine depthwise", "fp16", True, True),
    _dc_forward("fp32 affine depthwise, channels-last", "fp32", True, True, cl=True),
    _dc_forward("bf16 affine depthwise, channels-last", "bf16", True, True, cl=True),
    _dc_forward(
        "fp32 dense, split-TF32 tensor cores", "fp32", False, False, f"{_DC}:MMA_SPLIT_TF32"
    ),
    _dc_forward("bf16 dense, tensor cores", "bf16", False, False, f"{_DC}:MMA_BF16"),
    *_dc_dense_backward("fp32 dense, split-TF32 tensor cores", "fp32", f"{_DC}:MMA_SPLIT_TF32"),
    *_dc_dense_backward("bf16 dense, tensor cores", "bf16", f"{_DC}:MMA_BF16"),
    _pm_match("fp32 exact, P=3", False),
    _pm_match("split-tf32 fast, P=3", True),
    TritonTarget(
        "sliced_wasserstein",
        _SW,
        "_sign_gemm_kernel",
        "fp32 backward GEMM",
        dict(m_ptr="*fp32", sign_ptr="*i8", out_ptr="*fp32")
        | _ints("channels", "num_proj", "length"),
        dict(IS_FP64=False, BM=f"{_SW}:GEMM_BM", BN=f"{_SW}:GEMM_BN", BK=f"{_SW}:GEMM_BK"),
    ),
    TritonTarget(
        "sliced_wasserstein",
        _SW,
        "_sort_compare_row_kernel",
        "fp32 on-chip sort, L <= 1024 (4 warps)",
        dict(pu_ptr="*fp32", pv_ptr="*fp32", sign_u_ptr="*i8", sign_v_ptr="*i8")
        | dict(row_sum_ptr="*fp64", length="i32"),
        dict(HAS_V=False, BLOCK=1024),
    ),
    TritonTarget(
        "sliced_wasserstein",
        _SW,
        "_sort_compare_row_kernel",
        "fp32 on-chip sort, L <= 4096 (16 warps)",
        dict(pu_ptr="*fp32", pv_ptr="*fp32", sign_u_ptr="*i8", sign_v_ptr="*i8")
        | dict(row_sum_ptr="*fp64", length="i32"),
        dict(HAS_V=False, BLOCK=4096),
        {"num_warps": 16},
    ),
]


def _for_arch(value, arch: str):
    """An option's value for sm_<arch>: per-architecture dicts pick their entry (else "default")."""
    if isinstance(value, dict):
        return value.get(f"sm_{arch}", value["default"])
    return value


def _resolve(value):
    if isinstance(value, str) and value.startswith("tl:"):
        import triton.language as tl

        return getattr(tl, value[3:])
    if isinstance(value, str) and ":" in value:
        module, name = value.split(":")
        return getattr(importlib.import_module(module), name)
    return value


def triton_source(target: TritonTarget, arch: str):
    """(ASTSource, GPUTarget, options) of one Triton target for sm_<arch>, as ``triton.compile``
    takes them."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(target.module), target.kernel)
    consts = {k: _resolve(v) for k, v in target.constexprs.items()}
    sig = {n: "constexpr" if n in consts else target.types[n] for n in fn.arg_names}
    where = {(fn.arg_names.index(k),): v for k, v in consts.items()}
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in target.divisible16}
    source = ASTSource(fn, sig, constexprs=where, attrs=attrs)
    options = {k: _resolve(_for_arch(v, arch)) for k, v in target.options.items()}
    return source, GPUTarget("cuda", int(arch), 32), options


def triton_rows(target: TritonTarget, arch: str, workdir: Path) -> list[Row]:
    """Compile one Triton target for sm_<arch> and read the evidence."""
    import triton

    compiled = triton.compile(*triton_source(target, arch))
    stem = workdir / f"{target.kernel}_{abs(hash(target.label))}_sm{arch}"
    ptx, cubin = stem.with_suffix(".ptx"), stem.with_suffix(".cubin")
    ptx.write_text(compiled.asm["ptx"])
    cubin.write_bytes(compiled.asm["cubin"])
    ptx_arch = re.search(r"\.target (sm_\w+)", compiled.asm["ptx"]).group(1)
    proc = subprocess.run(
        [_triton_bin("ptxas"), "-v", f"-arch={ptx_arch}", str(ptx), "-o", os.devnull],
        capture_output=True,
        text=True,
    )
    sass = subprocess.run(
        [_triton_bin("cuobjdump"), "--dump-sass", str(cubin)], capture_output=True, text=True
    )
    mangled = compiled.metadata.name
    label = f"{target.kernel} ({target.label})"
    return _rows(
        target.op, "triton", arch, proc.stderr + proc.stdout, sass.stdout, {mangled: label}
    )


def _dot_rule_before_triton_3_8(target):
    """Triton < 3.8's CUDA minimum ``tl.dot`` shape (M, N, K): K >= 16, 32 for 8-bit operands
    (3.8 lowered float32 to 8 and float64 to 4)."""

    def check(lhs_type, rhs_type):
        return (1, 1, 32) if lhs_type.scalar.primitive_bitwidth == 8 else (1, 1, 16)

    return check


def ir_error(target: TritonTarget, arch: str) -> str | None:
    """Build only the Triton IR of one target for sm_<arch> under ``_dot_rule_before_triton_3_8``
    (the front end, where ``tl.dot`` shapes are checked): None if it builds, else the error."""
    from triton._C.libtriton import ir
    from triton.backends.nvidia import compiler as nvidia
    from triton.compiler.compiler import make_backend

    source, gpu, options = triton_source(target, arch)
    rule, nvidia.min_dot_size = nvidia.min_dot_size, _dot_rule_before_triton_3_8
    try:
        backend = make_backend(gpu)
        parsed = backend.parse_options(options)
        context = ir.context()
        ir.load_dialects(context)
        backend.load_dialects(context)
        codegen = backend.get_codegen_implementation(parsed)
        source.make_ir(gpu, parsed, codegen, backend.get_module_map(), context)
    except Exception as e:  # noqa: BLE001 - any front-end failure is the answer
        return f"{type(e).__name__}: {e}".splitlines()[0] + " " + str(e).splitlines()[-1]
    finally:
        nvidia.min_dot_size = rule
    return None


# ---------------------------------------------------------------- command line

OPS = ("deform_conv", "local_sliced_wasserstein", "patch_match", "sliced_wasserstein")


def collect(archs, ops) -> list[Row]:
    """Every row for the given architectures and ops (CUDA C++ first, then Triton)."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            for op in ops:
                if (ROOT / "csrc" / op / f"{op}_cuda.cu").exists():
                    rows += cuda_rows(op, arch, Path(tmp))
            for target in TRITON_TARGETS:
                if target.op in ops:
                    rows += triton_rows(target, arch, Path(tmp))
    return rows


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    head = "| op | source | kernel | arch | regs | spill B | stack B | LDG.128 | STG.128 | LDG | HMMA | HGMMA |"
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r.op} | {r.source} | `{r.kernel}` | {r.arch} | {r.regs} | {r.spill} | {r.stack} "
            f"| {r.ldg128} | {r.stg128} | {r.ldg} | {r.hmma} | {r.hgmma} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    """Print the table; exit 1 when any kernel spills or uses stack (local memory)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=["90"], help="SM versions, e.g. 90 80")
    parser.add_argument("--only", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument(
        "--ir-check", action="store_true", help="only build the Triton IR, under older rules"
    )
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    if args.ir_check:
        failed = 0
        for target in (t for t in TRITON_TARGETS if t.op in args.only):
            for arch in args.arch:
                error = ir_error(target, arch)
                failed += error is not None
                print(f"{target.kernel} ({target.label}) sm_{arch}: {error or 'ok'}")
        return 1 if failed else 0
    rows = collect(args.arch, args.only)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    bad = [r for r in rows if r.spill != 0 or r.stack != 0]
    for r in bad:
        print(
            f"spills or local memory: {r.op} {r.kernel} {r.arch}: {r.spill} B spill, "
            f"{r.stack} B stack",
            file=sys.stderr,
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
