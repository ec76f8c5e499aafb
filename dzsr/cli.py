"""The ``dzsr`` command line: info, train, sr, prepare, eval, demo, convert, export.

Bad input ends with exactly one ``dzsr <command>: error: ...`` line on stderr, naming the argument or
file, and exit status 2, without a traceback: bad arguments (argparse's usage block is left out),
missing, unreadable, empty, truncated or undecodable images and checkpoints, inconsistent sizes or
scales, bad configs and YAML, operating-system errors (read-only folder, full disk, a file where a
folder should be), OpenCV errors, and a kernel backend or device that cannot run here. Ctrl-C ends
with one ``dzsr <command>: interrupted ...`` line and exit status 130 (``dzsr train`` first writes a
checkpoint of the iteration it reached, see ``dzsr.train``).

Outputs are checked before any work and written atomically (``dzsr.outputs``): ``sr --out`` (and
``--save-compare``) must have a writable image extension, be no folder and not be one of the
command's inputs (``--short``, ``--tele``, ``--ckpt``, ``--extractor``; symlinks and hard links
included); in folder mode every output path is checked so (``dzsr.sr_batch``), and a failed pair
is reported and skipped instead of ending the command (exit status 1 at the end);
``eval --csv`` must end in ``.csv``; ``convert --out`` must end in ``.safetensors`` or ``.pt`` and
not be ``--ckpt`` or ``--extractor``; ``demo --out`` and ``prepare --dst`` must be usable folders;
``train`` refuses an ``log.out_dir`` that already holds a checkpoint unless ``--resume`` or
``--overwrite`` is given; ``export --out`` must end in ``.onnx`` and is refused if it exists unless
``--overwrite`` is given.

Kernel backend: ``sr --backend NAME`` selects it for the run; without it, and for every other
command, the environment variable ``DZSR_KERNELS_BACKEND`` selects it (``auto`` when unset). Every
command refuses an unknown name in either, and ``sr``, ``train`` and ``demo`` refuse, before any
work, a backend or ``--device`` (train: the config's ``device``) that cannot run on this machine.

Memory: every command first applies the package's allocator setup (``dzsr.allocator``: glibc
``mallopt`` so large freed buffers are reused instead of being handed back to the system and faulted
in again per tile; opt out with ``DZSR_ALLOCATOR=system``); ``dzsr info`` prints which is in use.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from . import allocator

EXIT_SOME_FAILED = 1  # dzsr sr folder mode: some pairs failed, the others were written
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
BACKEND_VARIABLE = "DZSR_KERNELS_BACKEND"
SR_DESCRIPTION = """Super-resolve a short-focus image with its telephoto as the reference.
Folder mode: --short DIR --tele DIR --out DIR pairs the images of the two folders by file name
without extension (a.jpg with a.png) and writes OUT/NAME.png for each pair; a pair that fails
(no partner, unreadable image, sizes that do not fit the scale) is reported in one line and
skipped, a summary table follows, and the exit status is 1 if any pair failed (2: bad arguments,
nothing run; 0: all written)."""


class _UsageError(Exception):
    """A command-line syntax error, already formatted as ``dzsr <command>: error: ...``."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line: no usage block
        raise _UsageError(f"{self.prog}: error: {message}")


def _env_backend() -> str | None:
    """``DZSR_KERNELS_BACKEND`` when set (checked by the kernels' own rule), else None."""
    from dzsr_kernels._backend import requested_backend

    name = requested_backend()  # raises ValueError naming the variable for an invalid value
    return name if BACKEND_VARIABLE in os.environ else None


def check_backend(flag: str | None, device_type: str) -> str | None:
    """The backend ``flag`` (``--backend``), else ``DZSR_KERNELS_BACKEND``, checked to run on
    ``device_type``; returns ``flag`` (None: leave the selection to the environment or auto)."""
    from dzsr_kernels import available_backends
    from dzsr_kernels._backend import BACKENDS, unavailable_reason

    env = _env_backend()
    if flag is not None and flag != "auto" and flag not in BACKENDS:
        raise ValueError(f"--backend must be one of auto, {', '.join(BACKENDS)}; got {flag!r}")
    name, source = (flag, "--backend") if flag is not None else (env or "auto", BACKEND_VARIABLE)
    if name != "auto" and name not in available_backends(device_type):
        raise ValueError(
            f"{source} {name}: cannot run on {device_type}: {unavailable_reason(name, device_type)}"
        )
    return flag


def cmd_info(args: argparse.Namespace) -> int:
    """Print versions and the backend each op runs on by default."""
    import torch

    import dzsr
    import dzsr_kernels
    from dzsr_kernels import _ext

    print(
        f"dzsr {dzsr.__version__} · torch {torch.__version__} · {torch.get_num_threads()} threads · "
        f"CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}"
    )
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        print(
            f"backends available on {device}: {', '.join(dzsr_kernels.available_backends(device))}"
        )
    for op, choice in dzsr_kernels.backend_table().items():
        print(f"  {op:<24} auto -> " + ", ".join(f"{dev}: {b}" for dev, b in choice.items()))
    missing = _ext.unavailable_reason("cpu")
    print(
        "C++ kernels: "
        + (
            f"unavailable ({missing})"
            if missing
            else f"built against torch {_ext.built_against() or 'unrecorded'}, "
            f"running torch {torch.__version__}"
        )
    )
    env = _env_backend()
    print(
        f"{BACKEND_VARIABLE}: " + (f"{env} (every command runs on it)" if env else "unset (auto)")
    )
    print(f"allocator: {allocator.configure()}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train from a YAML config (or preset name) with key=value overrides; --resume continues exactly."""
    from .config import load_config
    from .devices import resolve_device
    from .train import train

    config = load_config(args.config, args.overrides)
    check_backend(None, resolve_device(config["device"], "config key device").type)
    resume = True if args.resume == "" else args.resume  # bare --resume: OUT_DIR/last.pt
    path = train(config, resume=resume, progress=not args.no_progress, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # once under torchrun
        print(f"checkpoint: {path}")
    return 0


def _tile(args: argparse.Namespace):
    if args.tile < 0:
        raise ValueError(
            f"--tile must be 0 (untiled) or a positive number of LR pixels, got {args.tile}"
        )
    return None if args.tile == 0 else args.tile


def cmd_sr(args: argparse.Namespace) -> int:
    """Super-resolve a whole short-focus image with its telephoto as the reference (or folders of
    pairs: dzsr.sr_batch)."""
    import dzsr_kernels

    from . import sr_batch
    from .checkpoint import load_model
    from .devices import resolve_device
    from .infer import autocast_dtype

    device = resolve_device(args.device, "--device")
    backend = check_backend(args.backend, device.type)
    autocast_dtype(args.precision, device, "--precision")
    tile = _tile(args)
    folders = sr_batch.check_folder_mode(args.short, args.tele, args.out, args.save_compare)
    if folders:
        pairs = sr_batch.folder_pairs(args.short, args.tele, args.out, args.save_compare)
    else:
        pairs = [sr_batch.Pair(args.short, args.short, args.tele, args.out, args.save_compare)]
    sr_batch.check_pair_outputs(pairs, (args.ckpt, args.extractor))
    model = load_model(args.ckpt, args.scale, args.extractor).to(device)
    settings = sr_batch.Settings(
        model.scale,
        device,
        args.region,
        "never" if args.no_align else args.align,
        args.focal_ratio,
        tile,
        args.precision,
    )
    with dzsr_kernels.use_backend(backend) if backend else contextlib.nullcontext():
        if folders:
            rows = sr_batch.run_pairs(
                model, pairs, settings, _expected_errors(), _one_line, not args.no_progress
            )
            return EXIT_SOME_FAILED if any(r["status"] != "ok" for r in rows) else 0
        with sr_batch.tile_progress("tiles", not args.no_progress) as progress:
            height, width = sr_batch.super_resolve_pair(model, pairs[0], settings, progress, print)
    print(
        f"wrote {args.out} ({height}x{width}, x{model.scale}, {device}, {args.precision})"
        + (f" and {args.save_compare}" if args.save_compare else "")
    )
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Align raw captures SRC/short/NAME + SRC/tele/NAME into DST/{split}_LR, DST/{split}_HR."""
    from .data import prepare_folder
    from .outputs import check_folder

    if not args.split or os.path.basename(args.split) != args.split or args.split in (".", ".."):
        raise ValueError(f"--split must be a plain name such as train or test, got {args.split!r}")
    check_folder(args.dst, "--dst")
    records = prepare_folder(args.src, args.dst, args.scale, args.split, args.focal_ratio)
    for r in records:
        print(f"{r['name']}: LR {r['lr_size'][0]}x{r['lr_size'][1]}, trim {r['trim']}")
    print(f"prepared {len(records)} pairs into {args.dst}")
    return 0


def _lpips(args: argparse.Namespace):
    if not args.lpips:
        return None
    from .metrics import LPIPS

    return LPIPS.from_pretrained(args.alexnet, args.lpips_lin)


def cmd_eval(args: argparse.Namespace) -> int:
    """PSNR / SSIM (/ LPIPS) on the Full-Image and Corner-Image of SR outputs against ground truths,
    as the paper's evaluation computes them."""
    from .evaluate import evaluate_folder, format_table, summarize, write_csv
    from .outputs import check_output

    if args.csv is not None:
        check_output(args.csv, "--csv", (".csv",))
    rows = summarize(
        evaluate_folder(args.sr, args.gt, args.scale, _lpips(args), args.corner_weighting, args.y)
    )
    print(format_table(rows))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the shipped checkpoint on the bundled sample: SR image, side-by-side PNG, metrics table."""
    from .demo import check_outputs, run_demo

    check_backend(None, "cpu")
    check_outputs(args.out, (args.ckpt, args.alexnet, args.lpips_lin))
    run_demo(args.out, args.ckpt, tile=_tile(args), held_out=args.held_out, lpips=_lpips(args))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Rewrite a checkpoint (ours, or the authors' RefSR + Student .pth) as an inference one."""
    from .checkpoint import SAFETENSORS_SUFFIX, load_model, save_inference_checkpoint
    from .outputs import check_output

    check_output(args.out, "--out", (SAFETENSORS_SUFFIX, ".pt"), inputs=(args.ckpt, args.extractor))
    model = load_model(args.ckpt, args.scale, args.extractor)
    save_inference_checkpoint(args.out, model, half=args.half)
    print(f"wrote {args.out} (x{model.scale}, {'float16' if args.half else 'float32'})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write the test-time model as ONNX (opset 19, dynamic height and width) for ONNX Runtime."""
    from .export import INPUT_NAMES, OPSET, OUTPUT_NAME, export_checkpoint

    out = export_checkpoint(args.ckpt, args.out, args.overwrite, args.extractor)
    print(f"wrote {out} (ONNX opset {OPSET}: inputs {', '.join(INPUT_NAMES)} -> {OUTPUT_NAME})")
    return 0


def _add_tile(p: argparse.ArgumentParser) -> None:
    from .infer import DEFAULT_TILE

    p.add_argument(
        "--tile",
        type=int,
        default=DEFAULT_TILE,
        help=f"LR tile side of the exact halo tiling (default {DEFAULT_TILE}; 0 = untiled)",
    )


def _add_lpips(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lpips", action="store_true", help="also compute LPIPS (AlexNet v0.1, offline weights)"
    )
    p.add_argument(
        "--alexnet", help="alexnet-owt-7be5be79.pth (default: the torch hub checkpoints folder)"
    )
    p.add_argument(
        "--lpips-lin",
        help="LPIPS v0.1 alex lin weights (default: lpips package or torch hub folder)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``dzsr`` argument parser: one subcommand per command (info, train, sr, prepare, eval,
    demo, convert, export), each with its ``cmd_*`` function as ``func``."""
    parser = _Parser(prog="dzsr", description="SelfDZSR dual-zoom super-resolution")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help=cmd_info.__doc__).set_defaults(func=cmd_info)

    p = sub.add_parser("train", help=cmd_train.__doc__)
    p.add_argument(
        "--config",
        required=True,
        help="YAML file or preset: nikon_x4, nikon_x4_losw, camerafusion_x2, sample_x4",
    )
    p.add_argument(
        "overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=2e-4 data.root=DIR"
    )
    once = p.add_mutually_exclusive_group()
    once.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        help="continue from OUT_DIR/last.pt, or from the given checkpoint",
    )
    once.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an OUT_DIR that already holds checkpoints (they are replaced as the new "
        "run writes its own)",
    )
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sr", help=cmd_sr.__doc__, description=SR_DESCRIPTION)
    p.add_argument("--short", required=True, help="short-focus (wide) image, or a folder of them")
    p.add_argument("--tele", required=True, help="telephoto image of the same scene, or a folder")
    p.add_argument(
        "--out",
        required=True,
        help="output image path (.png; an existing file is replaced), or a folder",
    )
    p.add_argument(
        "--save-compare",
        metavar="PATH|DIR",
        help="also write bicubic | SR side by side, same height (a folder in folder mode)",
    )
    p.add_argument(
        "--ckpt",
        help="dzsr checkpoint, or the authors' RefSR_model_*.pth (default: the demo x4 one)",
    )
    p.add_argument(
        "--extractor", help="the authors' Student_model_*.pth (with an authors' RefSR checkpoint)"
    )
    p.add_argument(
        "--scale",
        type=int,
        choices=(2, 3, 4),
        help="expected scale (checked against the checkpoint)",
    )
    p.add_argument(
        "--region",
        choices=("full", "centre"),
        default="full",
        help="full: the whole short-focus image (default); centre: its focal-ratio centre crop",
    )
    aligning = p.add_mutually_exclusive_group()
    aligning.add_argument(
        "--align",
        choices=("auto", "always", "never"),
        default="auto",
        help="align the telephoto onto the short-focus focal-ratio centre crop "
        "(DIS flow warp, colour match, border trim): always; never (it "
        "already shows exactly that crop, e.g. the centre of an aligned "
        "ground truth: only resized); auto (default): never when its "
        "measured residual motion is at most 0.5 HR px median and 1 px 90th "
        "percentile, else always; the choice is printed. Use never for the "
        "authors' processed test pairs",
    )
    aligning.add_argument("--no-align", action="store_true", help="same as --align never")
    p.add_argument(
        "--focal-ratio", type=float, help="short/tele focal-length ratio (default 1/scale)"
    )
    p.add_argument(
        "--backend",
        help=f"kernel backend: auto, cpp, triton or reference (default: ${BACKEND_VARIABLE}, "
        "else auto)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (default: cuda when available, else cpu), cpu, cuda or cuda:N",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="convolution stages in fp32 (default), bf16 or fp16 (CUDA only); matching "
        "and the deformable convolutions stay fp32",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (they show on stderr only when it is a terminal)",
    )
    _add_tile(p)
    p.set_defaults(func=cmd_sr)

    p = sub.add_parser("prepare", help=cmd_prepare.__doc__)
    p.add_argument(
        "--src", required=True, help="folder with short/ and tele/ images of matching names"
    )
    p.add_argument("--dst", required=True, help="output dataset folder")
    p.add_argument("--scale", type=int, required=True, choices=(2, 3, 4))
    p.add_argument("--split", default="train", help="split name: train or test")
    p.add_argument(
        "--focal-ratio", type=float, help="short/tele focal-length ratio (default 1/scale)"
    )
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("eval", help=cmd_eval.__doc__)
    p.add_argument(
        "--sr", required=True, help="folder of SR images (same names as the ground truths)"
    )
    p.add_argument("--gt", required=True, help="folder of ground-truth images")
    p.add_argument(
        "--scale", type=int, required=True, choices=(2, 3, 4), help="sets the Corner-Image region"
    )
    p.add_argument("--csv", help="also write the table as CSV")
    p.add_argument(
        "--corner-weighting",
        choices=("plain", "area"),
        default="plain",
        help="Corner SSIM / LPIPS: plain mean of the four strips (default, the authors') "
        "or area-weighted mean; Corner PSNR always uses the area-weighted MSE",
    )
    p.add_argument(
        "--y",
        action="store_true",
        help="PSNR and SSIM on the BT.601 luma Y (MATLAB rgb2ycbcr), LPIPS on RGB",
    )
    _add_lpips(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help=cmd_demo.__doc__)
    p.add_argument("--out", default="dzsr_demo", help="output folder (default ./dzsr_demo)")
    p.add_argument(
        "--ckpt", help="checkpoint (default: the shipped dzsr/sample/demo_x4.safetensors)"
    )
    p.add_argument(
        "--held-out", action="store_true", help="also evaluate the held-out bundled photographs"
    )
    _add_tile(p)
    _add_lpips(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("convert", help=cmd_convert.__doc__)
    p.add_argument(
        "--ckpt",
        required=True,
        help="dzsr checkpoint (.safetensors or .pt) or the authors' RefSR_model_*.pth",
    )
    p.add_argument("--extractor", help="the authors' Student_model_*.pth (with their RefSR file)")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), help="expected scale (checked)")
    p.add_argument("--out", required=True, help="output: .safetensors (recommended) or .pt")
    p.add_argument(
        "--half", action="store_true", help="store float16 (half the size; read back into float32)"
    )
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help=cmd_export.__doc__)
    p.add_argument("--out", required=True, help="output ONNX file (.onnx)")
    p.add_argument(
        "--ckpt",
        help="dzsr checkpoint, or the authors' RefSR_model_*.pth (default: the demo x4 one)",
    )
    p.add_argument(
        "--extractor", help="the authors' Student_model_*.pth (with an authors' RefSR checkpoint)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_export)
    return parser


def _one_line(err: BaseException) -> str:
    from .outputs import reason

    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {reason(err)}"
    else:
        text = str(err)
    return (
        "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(err).__name__
    )


@contextlib.contextmanager
def _quiet_opencv():
    """OpenCV logs decoder complaints on stderr; the error line says what matters."""
    import cv2

    log = cv2.utils.logging
    level = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        log.setLogLevel(level)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Exception classes that bad input raises (anything else is a bug and keeps its traceback)."""
    import cv2
    import yaml

    from dzsr_kernels import BackendUnavailableError

    from .checkpoint import CheckpointMismatchError

    return (
        OSError,
        ValueError,
        CheckpointMismatchError,
        BackendUnavailableError,
        cv2.error,
        yaml.YAMLError,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the ``dzsr`` command line on ``argv`` (default ``sys.argv[1:]``); return the exit status:
    the command's own, ``EXIT_ERROR`` for a usage error or an expected error (``_expected_errors``,
    printed as one line, no traceback), ``EXIT_INTERRUPTED`` on Ctrl-C. Configures the allocator
    (``dzsr.allocator``) before anything allocates."""
    try:
        args, extra = build_parser().parse_known_args(argv)
        if extra:  # named after the command, not the top-level parser
            raise _UsageError(
                f"dzsr {args.command}: error: unrecognized arguments: {' '.join(extra)}"
            )
    except _UsageError as err:
        print(err, file=sys.stderr)
        return EXIT_ERROR
    try:  # before torch and the kernels allocate anything
        allocator.configure()
    except ValueError as err:
        print(f"dzsr {args.command}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    expected = _expected_errors()
    try:
        with _quiet_opencv():
            _env_backend()
            return args.func(args)
    except expected as err:
        print(f"dzsr {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as err:
        print(
            f"dzsr {args.command}: interrupted" + (f": {_one_line(err)}" if str(err) else ""),
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
