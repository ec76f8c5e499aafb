"""The ``dzsr`` command line."""
from __future__ import annotations

import argparse
import sys


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dzsr", description="SelfDZSR dual-zoom super-resolution")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help=cmd_info.__doc__).set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
