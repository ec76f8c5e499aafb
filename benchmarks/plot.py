"""Plots of the recorded size sweeps (``benchmarks.sweep``): for each device, one PNG with a row
per sweep (each op, ours vs its baseline, and whole-image inference) and two panels, time and peak
memory against the side S of the S x S map or image, both axes logarithmic. The machine line (date,
device, cores, torch, threads), the commit and the sweep's note are printed on the figure.

Reads ``RESULTS/sweep-*.json`` (default ``benchmarks/results/``) and writes
``OUT/sweep-DEVICE.png`` (default ``docs/plots/``), each file replaced atomically. Needs
matplotlib (``pip install "dzsr[plot]"``).

    python -m benchmarks.sweep --note "shared machine, loaded"   # record (minutes)
    python -m benchmarks.plot                                     # draw
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import math
import os

from dzsr.outputs import check_folder, write_bytes

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
PLOTS = os.path.join(os.path.dirname(HERE), "docs", "plots")
PANELS = (("time_s", "time (s)", 1.0), ("peak_bytes", "peak memory added (MiB)", 2.0**20))


def _series(sweep: dict, impl: str, key: str, unit: float) -> tuple[list[int], list[float]]:
    """Sizes and values of one impl; a zero (memory below the measurement's resolution) is left
    out of the logarithmic axis."""
    points = sorted((p for p in sweep["points"] if p["impl"] == impl), key=lambda p: p["height"])
    return (
        [p["height"] for p in points],
        [p[key] / unit if p[key] > 0 else math.nan for p in points],
    )


def _ratio_note(sweep: dict, key: str) -> str:
    """``baseline / ours`` at the largest size, e.g. ``torchvision / cpp at S=256: 12.3x``."""
    largest = max(p["height"] for p in sweep["points"])
    value = {p["impl"]: p[key] for p in sweep["points"] if p["height"] == largest}
    ours, base = value[sweep["ours"]], value[sweep["baseline"]]
    ratio = f"{base / ours:.1f}x" if ours > 0 else "-"
    return f"{sweep['baseline']} / {sweep['ours']} at S={largest}: {ratio}"


def figure(record: dict):
    """The matplotlib figure of one ``sweep-DEVICE.json`` record."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    sweeps = record["sweeps"]
    fig, axes = plt.subplots(
        len(sweeps), len(PANELS), figsize=(11, 3.2 * len(sweeps) + 1.2), squeeze=False
    )
    for row, sweep in zip(axes, sweeps.values()):
        for ax, (key, label, unit) in zip(row, PANELS):
            for impl, style in ((sweep["ours"], "o-"), (sweep["baseline"], "s--")):
                role = "ours" if impl == sweep["ours"] else "baseline"
                ax.plot(*_series(sweep, impl, key, unit), style, label=f"{impl} ({role})")
            sizes = sorted({p["height"] for p in sweep["points"]})
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(sizes, [str(s) for s in sizes])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlabel("S")
            ax.set_ylabel(label)
            ax.set_title(f"{sweep['title']}\n{_ratio_note(sweep, key)}", fontsize=9)
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=8)
    note = f" · {record['note']}" if record.get("note") else ""
    fig.suptitle(f"{record['machine']}\ncommit {record['commit']}{note}", fontsize=9)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=RESULTS, help=f"sweep JSON folder (default {RESULTS})")
    parser.add_argument("--out", default=PLOTS, help=f"PNG folder (default {PLOTS})")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parser.error('needs matplotlib: pip install "dzsr[plot]"')
    files = sorted(glob.glob(os.path.join(args.results, "sweep-*.json")))
    if not files:
        parser.error(f"no sweep-*.json in {args.results}: run python -m benchmarks.sweep first")
    check_folder(args.out, "--out")
    import matplotlib.pyplot as plt

    written = []
    for path in files:
        with open(path) as f:
            record = json.load(f)
        fig = figure(record)
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=80)
        plt.close(fig)
        target = os.path.join(args.out, f"sweep-{record['device']}.png")
        write_bytes(target, png.getvalue())
        written.append(target)
        print(f"wrote {target}")
    return written


if __name__ == "__main__":
    main()
