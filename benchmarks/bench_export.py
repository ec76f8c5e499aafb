"""Benchmark: the exported ONNX graph in ONNX Runtime (CPU) vs the PyTorch model, x4 on the bundled
demo pair (``dzsr.sample``: LR 125x185 -> SR 500x740, inputs from ``prepare_inputs``) with the
shipped demo checkpoint.

Cases: ``onnxruntime`` (``dzsr export``'s graph, CPU execution provider, as many intra-op threads
as torch uses) and ``pytorch`` (``model(...).sr``, the untiled forward the graph reproduces, ops on
``auto`` = cpp). Time: interleaved median after a warm-up (benchmarks/_harness.py); peak memory:
child-process RSS above a child that loads the same model/session and inputs. The last column is
relative max error, max |onnx - torch| / max |torch| over the SR output.

    python -m benchmarks.bench_export [--reps 5] [--no-memory] [--onnx FILE]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

from benchmarks import _harness as H

CASE = "benchmarks.bench_export:make"


def _inputs() -> tuple[torch.Tensor, ...]:
    from dzsr.data.inputs import prepare_inputs
    from dzsr.export import INPUT_NAMES
    from dzsr.sample import load_sample

    sample = load_sample()
    inputs = prepare_inputs(sample["short"], sample["tele"], 4)
    return tuple(inputs[k] for k in INPUT_NAMES)


def make(runtime: str, onnx_path: str, threads: int = 0, sink=None):
    """A thunk running one x4 SR of the demo pair with ``runtime`` (returns the output array)."""
    if threads:
        torch.set_num_threads(threads)
    inputs = _inputs()
    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}

        def thunk():
            return session.run(None, feed)[0]
    else:
        from dzsr.export import load_model

        model = load_model(None)

        def thunk():
            lr, ref, paste_ref, paste_box = inputs
            with torch.no_grad():
                return model(lr, ref, paste_ref=paste_ref, paste_box=paste_box).sr.numpy()

    def run():
        out = thunk()
        if sink is not None:
            sink[runtime] = out
        return out

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument(
        "--onnx", help="an exported demo graph (default: export one to a temporary file)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.onnx
        if path is None:
            from dzsr.export import export_checkpoint

            path = export_checkpoint(None, os.path.join(tmp, "demo.onnx"))
        outputs: dict = {}
        runtimes = ("onnxruntime", "pytorch")
        thunks = {r: make(r, path, sink=outputs) for r in runtimes}
        times = H.time_interleaved(thunks, reps=args.reps)
        want = outputs["pytorch"]
        error = abs(outputs["onnxruntime"] - want).max() / abs(want).max()
        rows = []
        for runtime in runtimes:
            mem = ""
            if not args.no_memory:
                kw = {"runtime": runtime, "onnx_path": path, "threads": torch.get_num_threads()}
                mem = H.fmt_bytes(H.peak_cpu_memory(CASE, kw))
            rows.append(
                [
                    runtime,
                    H.fmt_time(times[runtime]),
                    f"{times['pytorch'] / times[runtime]:.2f}x",
                    mem,
                    f"{error:.1e}",
                ]
            )
    import onnxruntime

    print(H.machine_line() + f" · onnxruntime {onnxruntime.__version__}")
    print("x4 SR of the demo pair, LR 125x185 -> SR 500x740, demo checkpoint")
    print(
        H.markdown_table(
            ["runtime", "time", "vs pytorch", "peak RSS added", "relative max error"], rows
        )
    )


if __name__ == "__main__":
    main()
