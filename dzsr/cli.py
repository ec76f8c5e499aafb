"""The ``dzsr`` command line: info, train, sr, prepare, eval, demo.

Expected failures (missing or unreadable files, inconsistent sizes or scales, bad configs) end
with one ``dzsr <command>: error: ...`` line on stderr and exit status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

EXIT_ERROR = 2


def cmd_info(args: argparse.Namespace) -> int:
    """Print versions and the backend each op runs on by default."""
    import torch

    import dzsr
    import dzsr_kernels

    print(f"dzsr {dzsr.__version__} · torch {torch.__version__} · {torch.get_num_threads()} threads · "
          f"CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}")
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        print(f"backends available on {device}: {', '.join(dzsr_kernels.available_backends(device))}")
    for op, choice in dzsr_kernels.backend_table().items():
        print(f"  {op:<22} auto -> " + ", ".join(f"{dev}: {b}" for dev, b in choice.items()))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train from a YAML config (or preset name) with key=value overrides; --resume continues exactly."""
    from .config import load_config
    from .train import train

    config = load_config(args.config, args.overrides)
    resume = True if args.resume == "" else args.resume  # bare --resume: OUT_DIR/last.pt
    path = train(config, resume=resume, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # once under torchrun
        print(f"checkpoint: {path}")
    return 0


def _tile(args: argparse.Namespace):
    return None if args.tile == 0 else args.tile


def _read_pair(short: str, tele: str):
    from .data import read_rgb

    return read_rgb(short), read_rgb(tele)


def cmd_sr(args: argparse.Namespace) -> int:
    """Super-resolve a whole short-focus image with its telephoto as the reference."""
    import torch

    import dzsr_kernels

    from .data import to_hwc, write_rgb
    from .infer import load_model, prepare_inputs, super_resolve

    short, tele = _read_pair(args.short, args.tele)
    model = load_model(args.ckpt, args.scale, args.extractor)
    inputs = prepare_inputs(short, tele, model.scale, args.region, not args.no_align, args.focal_ratio)
    device = torch.device(args.device)
    model.to(device)
    with dzsr_kernels.use_backend(args.backend):
        sr = super_resolve(model, inputs["lr"].to(device), inputs["ref"].to(device), inputs["paste_ref"].to(device),
                           inputs["paste_box"], tile=_tile(args))
    write_rgb(args.out, to_hwc(sr[0].clamp(0, 1)))
    print(f"wrote {args.out} ({sr.shape[-2]}x{sr.shape[-1]}, x{model.scale})")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Align raw captures SRC/short/NAME + SRC/tele/NAME into DST/{split}_LR, DST/{split}_HR."""
    from .data import prepare_folder

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
    """PSNR / SSIM (/ LPIPS) on the Full-Image and Corner-Image of SR outputs against ground truths."""
    from .evaluate import evaluate_folder, format_table, summarize, write_csv

    rows = summarize(evaluate_folder(args.sr, args.gt, args.scale, _lpips(args)))
    print(format_table(rows))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the shipped checkpoint on the bundled sample: SR image, side-by-side PNG, metrics table."""
    from .demo import run_demo

    run_demo(args.out, args.ckpt, tile=_tile(args), held_out=args.held_out, lpips=_lpips(args))
    return 0


def _add_tile(p: argparse.ArgumentParser) -> None:
    from .infer import DEFAULT_TILE

    p.add_argument("--tile", type=int, default=DEFAULT_TILE,
                   help=f"LR tile side of the exact halo tiling (default {DEFAULT_TILE}; 0 = untiled)")


def _add_lpips(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lpips", action="store_true", help="also compute LPIPS (AlexNet v0.1, offline weights)")
    p.add_argument("--alexnet", help="alexnet-owt-7be5be79.pth (default: the torch hub checkpoints folder)")
    p.add_argument("--lpips-lin", help="LPIPS v0.1 alex lin weights (default: lpips package or torch hub folder)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dzsr", description="SelfDZSR dual-zoom super-resolution")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help=cmd_info.__doc__).set_defaults(func=cmd_info)

    p = sub.add_parser("train", help=cmd_train.__doc__)
    p.add_argument("--config", required=True, help="YAML file or preset: nikon_x4, camerafusion_x2, sample_x4")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=2e-4 data.root=DIR")
    p.add_argument("--resume", nargs="?", const="", default=None,
                   help="continue from OUT_DIR/last.pt, or from the given checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sr", help=cmd_sr.__doc__)
    p.add_argument("--short", required=True, help="short-focus (wide) image")
    p.add_argument("--tele", required=True, help="telephoto image of the same scene")
    p.add_argument("--out", required=True, help="output image path (.png)")
    p.add_argument("--ckpt", help="dzsr checkpoint, or the authors' RefSR_model_*.pth (default: the demo x4 one)")
    p.add_argument("--extractor", help="the authors' Student_model_*.pth (with an authors' RefSR checkpoint)")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), help="expected scale (checked against the checkpoint)")
    p.add_argument("--region", choices=("full", "centre"), default="full",
                   help="full: the whole short-focus image (default); centre: its focal-ratio centre crop")
    p.add_argument("--no-align", action="store_true", help="the telephoto is already aligned to the centre crop")
    p.add_argument("--focal-ratio", type=float, help="short/tele focal-length ratio (default 1/scale)")
    p.add_argument("--backend", default="auto", help="kernel backend: auto, cpp, triton or reference")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    _add_tile(p)
    p.set_defaults(func=cmd_sr)

    p = sub.add_parser("prepare", help=cmd_prepare.__doc__)
    p.add_argument("--src", required=True, help="folder with short/ and tele/ images of matching names")
    p.add_argument("--dst", required=True, help="output dataset folder")
    p.add_argument("--scale", type=int, required=True, choices=(2, 3, 4))
    p.add_argument("--split", default="train", help="split name: train or test")
    p.add_argument("--focal-ratio", type=float, help="short/tele focal-length ratio (default 1/scale)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("eval", help=cmd_eval.__doc__)
    p.add_argument("--sr", required=True, help="folder of SR images (same names as the ground truths)")
    p.add_argument("--gt", required=True, help="folder of ground-truth images")
    p.add_argument("--scale", type=int, required=True, choices=(2, 3, 4), help="sets the Corner-Image region")
    p.add_argument("--csv", help="also write the table as CSV")
    _add_lpips(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help=cmd_demo.__doc__)
    p.add_argument("--out", default="dzsr_demo", help="output folder (default ./dzsr_demo)")
    p.add_argument("--ckpt", help="checkpoint (default: the shipped dzsr/sample/demo_x4.pt)")
    p.add_argument("--held-out", action="store_true", help="also evaluate the held-out bundled photographs")
    _add_tile(p)
    _add_lpips(p)
    p.set_defaults(func=cmd_demo)
    return parser


def _one_line(err: BaseException) -> str:
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointMismatchError

    try:
        return args.func(args)
    except (FileNotFoundError, IsADirectoryError, PermissionError, ValueError, CheckpointMismatchError) as err:
        print(f"dzsr {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"dzsr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
