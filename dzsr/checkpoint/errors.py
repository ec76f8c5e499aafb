"""The error of a state dict that does not fit its network, shared by every checkpoint format."""

from __future__ import annotations

from collections.abc import Iterable


class CheckpointMismatchError(RuntimeError):
    """A state dict does not fit the network; the message lists missing, unexpected and
    mis-shaped keys, ``summary`` says it in one line (counts and one example)."""

    def __init__(self, message: str, summary: str | None = None):
        super().__init__(message)
        self.summary = summary or message.splitlines()[0]


def raise_mismatch(
    what: str,
    missing: Iterable[str],
    unexpected: Iterable[str],
    misshaped: Iterable[tuple[str, tuple, tuple]],
) -> None:
    """Raise ``CheckpointMismatchError`` ("``what`` does not match the network:" then one line per
    kind) when any list is non-empty; ``misshaped`` holds (key, got shape, expected shape)."""
    missing, unexpected, misshaped = list(missing), list(unexpected), list(misshaped)
    if not (missing or unexpected or misshaped):
        return
    lines = [f"{what} does not match the network:"]
    kinds = [
        ("missing", sorted(missing)),
        ("unexpected", sorted(unexpected)),
        ("mis-shaped", sorted(k for k, _, _ in misshaped)),
    ]
    summary = f"{what} does not match the network: " + ", ".join(
        f"{len(keys)} {kind} keys (e.g. {keys[0]})" for kind, keys in kinds if keys
    )
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {', '.join(sorted(missing))}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(sorted(unexpected))}")
    if misshaped:
        lines.append(
            f"  mis-shaped keys ({len(misshaped)}): "
            + ", ".join(
                f"{k} (got {tuple(g)}, expected {tuple(e)})" for k, g, e in sorted(misshaped)
            )
        )
    raise CheckpointMismatchError("\n".join(lines), summary)
