"""``dzsr sr``'s work: one pair of files, or two folders of pairs; outputs, progress, summary.

Single pair (``--short FILE --tele FILE --out FILE``): any error ends the command (``dzsr.cli``).

Folder mode (``--short DIR --tele DIR --out DIR``): ``folder_pairs`` pairs the image files of the
two folders by name without extension (``a.jpg`` pairs with ``a.png``; extensions are compared
case-insensitively only to recognise images, ``dzsr.data.imageio.IMAGE_EXTENSIONS``; other files
and subfolders are ignored). A name found in one folder only, or twice in one folder (``a.jpg`` and
``a.png``), is a failed pair. Each pair's SR is written to ``OUT/NAME.png`` (and its comparison
picture to ``COMPARE/NAME.png``); ``run_pairs`` processes the pairs in name order, reports a pair
that fails (missing partner, unreadable image, sizes that do not fit the scale, out of memory) in
one ``dzsr sr: NAME: failed: ...`` line on stderr, goes on with the next, and prints a summary table
(pair, output size, seconds, status) on stdout at the end.

Outputs (``check_pair_outputs``, before any pair runs): every output path is checked with
``dzsr.outputs.check_output`` against every input file (both folders' images, the checkpoint, the
extractor: symlinks and hard links included), and no two outputs may be one file. As for a single
``--out``, an existing output file is replaced, atomically, by the new one.

Progress (``tile_progress``, ``run_pairs``): tqdm bars on stderr over the pairs (folder mode)
and over the tiles of the current pair (``super_resolve``'s ``progress``), shown only when stderr
is a terminal and ``--no-progress`` is not given.

Comparison picture (``--save-compare``): the bicubic-upsampled short-focus image beside the SR, same
height, 4 white pixels apart (``dzsr.demo.side_by_side``). The telephoto is left out: it covers only
the centre 1/scale of the frame, and a third full-size panel would make the picture half as large
again.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .data import read_rgb, to_hwc, write_rgb
from .data.imageio import IMAGE_EXTENSIONS, is_image_file, writable_extensions
from .data.inputs import prepare_inputs
from .demo import bicubic, side_by_side
from .infer import super_resolve
from .outputs import OutputError, check_folder, check_output

OUTPUT_EXTENSION = ".png"


@dataclass
class Pair:
    """One short-focus/telephoto pair and where its results go; ``problem`` says why it cannot run
    (then ``short`` or ``tele`` may be None)."""

    name: str
    short: str | None
    tele: str | None
    out: str
    compare: str | None = None
    problem: str | None = None


@dataclass
class Settings:
    """How every pair is run: the model's scale, the device, ``prepare_inputs``' region, align and
    focal_ratio, ``super_resolve``'s tile and precision."""

    scale: int
    device: torch.device
    region: str = "full"
    align: str = "auto"
    focal_ratio: float | None = None
    tile: int | None = None
    precision: str = "fp32"


def _images_by_name(folder: str, what: str) -> dict[str, list[str]]:
    """The image files of ``folder`` grouped by name without extension."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{what}: folder not found: {folder}")
    found: dict[str, list[str]] = {}
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if is_image_file(entry) and not os.path.isdir(path):
            found.setdefault(os.path.splitext(entry)[0], []).append(path)
    return found


def _problem(
    name: str, shorts: list[str], teles: list[str], short_dir: str, tele_dir: str
) -> str | None:
    if len(shorts) > 1 or len(teles) > 1:
        files = ", ".join(os.path.basename(p) for p in (shorts if len(shorts) > 1 else teles))
        return f"ambiguous name: {files} in {short_dir if len(shorts) > 1 else tele_dir}"
    if not shorts:
        return f"no short-focus image {name}.* in {short_dir}"
    if not teles:
        return f"no telephoto image {name}.* in {tele_dir}"
    return None


def folder_pairs(
    short_dir: str, tele_dir: str, out_dir: str, compare_dir: str | None = None
) -> list[Pair]:
    """The pairs of two folders by file name (module docstring), in name order."""
    shorts, teles = _images_by_name(short_dir, "--short"), _images_by_name(tele_dir, "--tele")
    if not shorts and not teles:
        raise FileNotFoundError(
            f"--short {short_dir} and --tele {tele_dir} hold no images "
            f"(expected {', '.join(IMAGE_EXTENSIONS)} files)"
        )
    pairs = []
    for name in sorted(set(shorts) | set(teles)):
        s, t = shorts.get(name, []), teles.get(name, [])
        file = name + OUTPUT_EXTENSION
        compare = None if compare_dir is None else os.path.join(compare_dir, file)
        pairs.append(
            Pair(
                name,
                s[0] if len(s) == 1 else None,
                t[0] if len(t) == 1 else None,
                os.path.join(out_dir, file),
                compare,
                _problem(name, s, t, short_dir, tele_dir),
            )
        )
    return pairs


def check_pair_outputs(pairs: list[Pair], other_inputs=()) -> None:
    """Refuse, before any work, an output path that ``check_output`` refuses, that is one of the
    inputs, or that two outputs share (module docstring)."""
    inputs = [p for pair in pairs for p in (pair.short, pair.tele) if p is not None]
    inputs += [p for p in other_inputs if p is not None]
    owner: dict[str, str] = {}
    for pair in pairs:
        for path, what in ((pair.out, "--out"), (pair.compare, "--save-compare")):
            if path is None:
                continue
            check_output(path, what, writable_extensions(), inputs)
            key = os.path.realpath(path)
            if key in owner:
                raise OutputError(
                    f"{what}: {path} would also be written as {owner[key]}; "
                    f"give --out and --save-compare different paths"
                )
            owner[key] = f"{what} {path}"


def check_folder_mode(short: str, tele: str, out: str, compare: str | None) -> bool:
    """Whether the arguments ask for folder mode (``--short`` is a folder); then ``--tele`` must be
    a folder and ``--out`` (and ``--save-compare``) usable folders, else ValueError/OutputError."""
    folders = os.path.isdir(short), os.path.isdir(tele)
    if folders[0] != folders[1]:
        named = [("--short", short), ("--tele", tele)]
        (a, a_path), (b, b_path) = named if folders[0] else named[::-1]
        if not os.path.exists(b_path):
            raise FileNotFoundError(
                f"{b}: folder not found: {b_path} ({a} is a folder: folder mode)"
            )
        raise ValueError(
            f"{a} {a_path} is a folder but {b} {b_path} is not: give two folders "
            f"(folder mode, pairs by file name) or two image files"
        )
    if not folders[0]:
        return False
    for path, what in ((out, "--out"), (compare, "--save-compare")):
        if path is not None and os.path.exists(path) and not os.path.isdir(path):
            raise OutputError(f"{what}: {path} is a file; in folder mode give a folder")
        if path is not None:
            check_folder(path, what)
    return True


def _bar(enabled: bool, **kwargs):
    """A tqdm bar on stderr, shown only on a terminal (tqdm's ``disable=None``) and if
    ``enabled``."""

    return tqdm(disable=None if enabled else True, dynamic_ncols=True, **kwargs)


@contextlib.contextmanager
def tile_progress(name: str, enabled: bool):
    """A ``progress(done, total)`` callable for ``super_resolve`` that drives a bar over one
    pair's tiles, closed when the context ends."""
    bar = _bar(enabled, unit="tile", desc=name, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def super_resolve_pair(
    model, pair: Pair, settings: Settings, progress=None, note: Callable[[str], None] | None = None
) -> tuple[int, int]:
    """Read, prepare, super-resolve and write one pair (and its comparison picture); returns the
    output's (height, width). ``note`` gets the line saying how the telephoto was aligned
    (``prepare_inputs``' ``alignment``). Running out of memory is a ValueError that says what to
    change."""
    short, tele = read_rgb(pair.short), read_rgb(pair.tele)
    inputs = prepare_inputs(
        short, tele, settings.scale, settings.region, settings.align, settings.focal_ratio
    )
    if note is not None:
        note(inputs["alignment"])
    device = settings.device
    try:
        sr = super_resolve(
            model,
            inputs["lr"].to(device),
            inputs["ref"].to(device),
            inputs["paste_ref"].to(device),
            inputs["paste_box"],
            tile=settings.tile,
            progress=progress,
            precision=settings.precision,
        )
    except torch.OutOfMemoryError as err:
        height, width = inputs["lr"].shape[-2:]
        raise ValueError(
            f"out of memory on {device} for the {height}x{width} short-focus image: "
            f"try a smaller --tile or --precision bf16 "
            f"({str(err).splitlines()[0] if str(err) else 'no details'})"
        ) from None
    sr = to_hwc(sr[0].clamp(0, 1))
    write_rgb(pair.out, sr)
    if pair.compare is not None:
        upsampled = to_hwc(bicubic(inputs["lr"], settings.scale)[0])
        write_rgb(pair.compare, side_by_side([upsampled, sr]))
    return sr.shape[:2]


def run_pairs(
    model,
    pairs: list[Pair],
    settings: Settings,
    errors: tuple[type[BaseException], ...],
    describe: Callable[[BaseException], str],
    show_progress: bool = True,
) -> list[dict]:
    """Process every pair (folder mode, module docstring): a pair raising one of ``errors`` is
    reported on stderr as ``describe(error)`` and skipped. Prints the summary table; returns its
    rows (``pair``, ``output``, ``seconds``, ``status``)."""

    rows = []
    with _bar(show_progress, total=len(pairs), unit="pair", desc="pairs") as pair_bar:
        for pair in pairs:
            start, size, problem = time.perf_counter(), None, pair.problem
            if problem is None:
                try:
                    with tile_progress(pair.name, show_progress) as progress:
                        size = super_resolve_pair(model, pair, settings, progress)
                except errors as err:
                    problem = describe(err)
            status = "ok" if problem is None else f"failed: {problem}"
            if problem is not None:
                tqdm.write(f"dzsr sr: {pair.name}: {status}", file=sys.stderr)
            rows.append(
                {
                    "pair": pair.name,
                    "output": f"{size[0]}x{size[1]}" if size else "-",
                    "seconds": f"{time.perf_counter() - start:.1f}",
                    "status": status,
                }
            )
            pair_bar.update(1)
    print(summary_table(rows))
    return rows


def summary_table(rows: list[dict]) -> str:
    """Markdown table of ``run_pairs``' rows and a closing count line."""
    lines = ["| pair | output | seconds | status |", "|---|---|---|---|"]
    lines += [f"| {r['pair']} | {r['output']} | {r['seconds']} | {r['status']} |" for r in rows]
    failed = sum(r["status"] != "ok" for r in rows)
    lines.append(
        f"{len(rows) - failed} of {len(rows)} pairs written"
        + (f", {failed} failed" if failed else "")
    )
    return "\n".join(lines)
