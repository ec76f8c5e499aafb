"""Benchmark: the whole SelfDZSR model, fast ops vs reference ops, time and peak memory.

Cases (x4 unless --scale; random weights, VGG-19 of the SW loss random too):
  train   one training iteration: KernelGen + extractor + restoration forward, L1 + SW loss
          (``SWLoss(weights=None)``; ``--loss l1``: L1 only; ``--vgg-dtype bfloat16``: the SW loss's
          VGG stack under bfloat16 autocast, for every backend) + KernelGen loss, backward, Adam step
          of both networks;
          batch 16, LR 48x48 (the authors' setting), reference 48x48 pasted at a 12x12 box;
  infer   one inference forward (eval, no grad) at LR 256x256 with a 256x256 reference window
          and the paste of a 256x256 HR reference into the central 64x64 LR box.
Backends: ``reference`` (pure-PyTorch oracles of every dzsr_kernels op) and the fast ones
(``cpp``; on CUDA also ``triton`` and ``auto``, the per-op default), all in the same run. Time:
interleaved median after a warm-up (benchmarks/_harness.py). Peak memory: CPU child-process RSS
above a child that builds the same model and inputs; CUDA max_memory_allocated.

    python -m benchmarks.bench_model [--quick] [--device cuda] [--reps 3] [--no-memory] [--cases train infer]
                                     [--loss l1sw|l1] [--vgg-dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks import _harness

CASE = "benchmarks.bench_model:make_case"
FULL = {"train": {"batch": 16, "size": 48}, "infer": {"batch": 1, "size": 256}}
QUICK = {"train": {"batch": 2, "size": 24}, "infer": {"batch": 1, "size": 64}}


def make_inputs(batch: int, size: int, scale: int, device: str, training: bool) -> dict:
    gen = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.rand(*shape, generator=gen).to(device)  # noqa: E731
    box = size // 4
    lr, ref = rand(batch, 3, size, size), rand(batch, 3, size, size)
    y0 = (size - box) // 2
    inputs = dict(
        lr=lr,
        ref=ref,
        paste_ref=rand(batch, 3, scale * box, scale * box),
        paste_box=torch.tensor([[y0, y0 + box, y0, y0 + box]] * batch),
    )
    if training:
        inputs.update(
            gt=rand(batch, 3, scale * size, scale * size),
            noise=0.02 * (rand(batch, 3, size, size) - 0.5),
        )
    return inputs


def make_case(
    case: str,
    backend: str,
    batch: int,
    size: int,
    scale: int = 4,
    device: str = "cpu",
    sw: bool = True,
    vgg_dtype: str = "float32",
):
    """Model, inputs (and loss/optimizer for ``train``) and a thunk running one iteration/forward."""
    import dzsr_kernels as dk
    from dzsr.losses import SelfDZSRObjective, SWLoss
    from dzsr.models import SelfDZSR

    torch.manual_seed(0)
    model = SelfDZSR(scale).to(device)
    training = case == "train"
    model.train(training)
    inputs = make_inputs(batch, size, scale, device, training)
    if backend not in ("reference", "auto"):
        from dzsr_kernels import _backend

        for op in ("deform_conv2d", "patch_match", "sliced_wasserstein"):
            reason = _backend.unavailable_reason(backend, torch.device(device).type, op)
            if reason is not None:  # also loads the extension, outside the measured work
                raise RuntimeError(reason)
    if not training:

        def infer():
            with dk.use_backend(backend), torch.no_grad():
                return model(**inputs).sr

        return infer

    objective = SelfDZSRObjective(
        sw_loss=SWLoss(weights=None, vgg_dtype=getattr(torch, vgg_dtype)).to(device) if sw else None
    )
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def train_step():
        torch.manual_seed(1)  # the same dropout / paste / projection draws for every backend
        with dk.use_backend(backend):
            total, _ = objective(model(**inputs), inputs["gt"], inputs["lr"])
            optimizer.zero_grad(set_to_none=True)
            total.backward()
        optimizer.step()
        return total

    return train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--cases", nargs="+", default=["train", "infer"], choices=["train", "infer"]
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument(
        "--loss",
        choices=["l1sw", "l1"],
        default="l1sw",
        help="training loss: L1+SW (VGG-19 features, the default) or L1 only",
    )
    parser.add_argument(
        "--vgg-dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="precision of the SW loss's VGG-19 feature stack (SWLoss(vgg_dtype=...))",
    )
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    # auto: each op on its measured-fastest backend (on CUDA: deform conv and local SW on cpp,
    # matching and SW on the reference); on the CPU it is cpp for every op, the cpp row
    backends = ["reference", "cpp"] + (["triton", "auto"] if cuda else [])
    sizes = QUICK if args.quick else FULL
    print(_harness.machine_line())
    print(f"SelfDZSR x{args.scale}, device {args.device}, median of {args.reps} after 1 warm-up\n")
    rows = []
    for case in args.cases:
        kw = {
            b: {
                "case": case,
                "backend": b,
                "scale": args.scale,
                "device": args.device,
                **sizes[case],
            }
            for b in backends
        }
        if case == "train":
            for b in backends:
                kw[b]["sw"] = args.loss == "l1sw"
                kw[b]["vgg_dtype"] = args.vgg_dtype
        mems = {}
        if not args.no_memory and not cuda:
            # before this process grows: a spawned child's ru_maxrss starts from its parent's RSS
            mems = {b: _harness.peak_cpu_memory(CASE, kw[b]) for b in backends}
        thunks = {b: make_case(**kw[b]) for b in backends}
        times = _harness.time_interleaved(thunks, reps=args.reps, device=args.device)
        if not args.no_memory and cuda:
            mems = {b: _harness.peak_cuda_memory(thunks[b]) for b in backends}
        del thunks
        loss = (
            "L1"
            if args.loss == "l1"
            else "L1+SW" + (" (bf16 VGG)" if args.vgg_dtype == "bfloat16" else "")
        )
        what = (
            f"train iter, batch {sizes[case]['batch']}, LR {sizes[case]['size']}², {loss}"
            if case == "train"
            else f"inference, LR {sizes[case]['size']}²"
        )
        for b in backends:
            mem = (
                f"{_harness.fmt_bytes(mems[b])} ({mems[b] / max(mems['reference'], 1):.2f}x)"
                if mems
                else "-"
            )
            rows.append(
                [what, b, _harness.fmt_time(times[b]), f"{times['reference'] / times[b]:.2f}x", mem]
            )
    print(
        _harness.markdown_table(
            ["case", "backend", "time", "speed-up vs reference", "peak memory (vs reference)"], rows
        )
    )


if __name__ == "__main__":
    main()
