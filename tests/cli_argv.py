"""Command lines of ``dzsr sr`` for the CLI tests (tests' shared helper)."""


def sr_argv(short, tele, out, *extra):
    """``dzsr sr`` arguments for one pair (or two folders) and an output, then ``extra``; every
    value passed through str()."""
    return ["sr", *map(str, ["--short", short, "--tele", tele, "--out", out, *extra])]
