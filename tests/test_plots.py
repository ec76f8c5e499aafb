"""``benchmarks.sweep`` records JSON that ``benchmarks.plot`` draws, one PNG per device."""

from __future__ import annotations

import json

import pytest

from benchmarks import plot, sweep
from dzsr.data import read_rgb

pytest.importorskip("matplotlib")  # the optional [plot] extra (also in [test])


def _record(device: str, scale: float) -> dict:
    points = [
        {
            "impl": impl,
            "height": s,
            "width": s,
            "time_s": scale * f * s * s / 1e4,
            "peak_bytes": int(f * s * s * 4096),
        }
        for s in (32, 64, 128)
        for impl, f in (("cpp", 1.0), ("reference", 3.0))
    ]
    points[0]["peak_bytes"] = 0  # below the measurement's resolution: left off the log axis
    sweeps = {
        name: {"title": f"{name} title", "ours": "cpp", "baseline": "reference", "points": points}
        for name in ("sw_loss", "inference")
    }
    return {
        "machine": f"2026-01-01 · {device} machine",
        "commit": "abc1234",
        "note": "loaded",
        "device": device,
        "sweeps": sweeps,
    }


def test_plot_draws_one_png_per_device(tmp_path):
    for device, scale in (("cpu", 1.0), ("cuda", 0.01)):
        (tmp_path / f"sweep-{device}.json").write_text(json.dumps(_record(device, scale)))
    written = plot.main(["--results", str(tmp_path), "--out", str(tmp_path / "plots")])
    assert sorted(written) == [str(tmp_path / "plots" / f"sweep-{d}.png") for d in ("cpu", "cuda")]
    for path in written:
        img = read_rgb(path)
        assert img.shape[0] > 400 and img.shape[1] > 600 and img.std() > 10  # drawn, not blank
    assert plot._ratio_note(_record("cpu", 1.0)["sweeps"]["sw_loss"], "time_s") == (
        "reference / cpp at S=128: 3.0x"
    )


def test_plot_without_results_says_what_to_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        plot.main(["--results", str(tmp_path), "--out", str(tmp_path / "plots")])
    assert "run python -m benchmarks.sweep first" in capsys.readouterr().err
    assert not (tmp_path / "plots").exists()


@pytest.mark.slow
def test_quick_sweep_records_every_point(tmp_path):
    sweep.main(["--quick", "--only", "sw_loss", "--reps", "1", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "sweep-cpu.json").read_text())
    assert record["device"] == "cpu" and list(record["sweeps"]) == ["sw_loss"]
    result = record["sweeps"]["sw_loss"]
    assert (result["ours"], result["baseline"]) == ("cpp", "reference")
    sizes = sweep.SWEEPS["sw_loss"].quick_sizes
    assert sorted((p["height"], p["impl"]) for p in result["points"]) == sorted(
        (s, impl) for s in sizes for impl in ("cpp", "reference")
    )
    assert all(p["time_s"] > 0 and p["peak_bytes"] >= 0 for p in result["points"])
    assert plot.main(["--results", str(tmp_path), "--out", str(tmp_path)]) == [
        str(tmp_path / "sweep-cpu.png")
    ]
