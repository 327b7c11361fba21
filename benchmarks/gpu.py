"""GPU benchmark: per-probe Hessian-vector product cost and memory on a ResNet-18 and a GPT-2 small.

Run on a GPU machine through ``benchmarks/gpu_check.sh`` (about 8 minutes on one H100: ResNet-18
alone took 4), or anywhere as ``python -m benchmarks.gpu --tiny`` (tiny sizes, a few minutes on a
CPU) to check the script. Synthetic batches: ResNet-18 (11.2M parameters) on 128 images of
32x32x3, and a GPT-2-small-sized decoder (124M parameters) on 8 sequences of 256 tokens.

First, for each workload, the figures the targets are about: the JAX/PyTorch agreement check, a
gradient, a one-shot ``hessjax.hvp``, the linearized operator's memory, ``hessjax.hvp_fn`` per
probe in vmapped chunks of 10 (as multiples of the gradient, with the device's peak memory after
each, in increasing order of footprint), and a 100-probe trace against PyHessian's ``trace``
(PyHessian carried to the GPU machine as a wheel, see ``benchmarks/gpu_check.sh``). Then the rest:
chunks of 50, JAX reverse-over-reverse, PyTorch's double-backward HVP, PyHessian's reused-graph
product and ``torch.func`` forward-over-reverse (curvlinops' method). The largest model whose trace
fits is ``benchmarks/gpu_scale.py``.

Both frameworks run in full float32 (no TF32). The JAX peak memory is
``device.memory_stats()["peak_bytes_in_use"]``, which JAX cannot reset, hence the order above. The
markdown table is rewritten after every row to ``$OUT/gpu_results.md`` (when ``OUT`` is set), so a
run cut short still leaves its rows; the log gives each row's elapsed time.
"""

from __future__ import annotations

import os

# JAX would otherwise take 75% of the GPU up front and leave PyTorch nothing.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# No TF32 in cuBLAS or cuDNN, for either framework (their own switches do not reach every kernel).
os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
# As in benchmarks/cpu.py: PyTorch's spinning OpenMP threads collapse on a busy CPU (--tiny).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import pathlib  # noqa: E402

import jax  # noqa: E402

import hessjax  # noqa: E402
from benchmarks import peers, timing  # noqa: E402
from benchmarks.figures import product_figures, rademacher, ratio  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    TransformerShape,
    Workload,
    check_agreement,
    synthetic_resnet18,
    synthetic_transformer,
)

CHUNKS = (10, 50)
# cuDNN picks convolution algorithms (Winograd, FFT, implicit GEMM) by shape and framework, and
# they round differently in float32: on the ResNet-18 the two frameworks' gradients differ by
# 2.4e-3 (H100, 2026-11-27). A wrong model or weight copy gives errors of order one.
AGREEMENT_RTOL_GPU = 1e-2
NUM_PROBES = 100


WORKLOADS = ("resnet18", "decoder")


def check_workloads(names: tuple[str, ...]) -> None:
    """Raises ValueError unless `names` is a non-empty subset of `WORKLOADS`."""
    if not names or set(names) - set(WORKLOADS):
        raise ValueError(f"workloads must be a non-empty subset of {WORKLOADS}; got {names!r}.")


def workloads(tiny: bool, names: tuple[str, ...] = WORKLOADS) -> list[Workload]:
    """The GPU workloads named in `names` (of `WORKLOADS`), or tiny versions of them that run on
    a CPU in seconds."""
    check_workloads(names)
    if tiny:
        made = {"resnet18": lambda: synthetic_resnet18(batch_size=8, image_size=8, width=4),
                "decoder": lambda: synthetic_transformer(2, 16, TransformerShape(100, 16, 32, 2, 4))}
    else:
        made = {"resnet18": lambda: synthetic_resnet18(batch_size=128),
                "decoder": lambda: synthetic_transformer(8, 256)}
    return [made[name]() for name in WORKLOADS if name in names]


def jax_peak_memory() -> str:
    """The JAX device's peak memory so far (empty where the backend keeps no statistics)."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return "" if peak is None else f"JAX peak {peak / 2**30:.2f} GiB"


def torch_device() -> str | None:
    """``"cuda"`` or ``"cpu"`` matching JAX's backend, or None without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def headline_figures(workload: Workload, table: timing.Table, repeats: int) -> None:
    """A gradient, a one-shot HVP and ``hvp_fn`` per probe in vmapped chunks of ``CHUNKS[0]``.

    In that order, the order of their memory footprints, so each row's peak memory is its own.
    """
    loss_fn, params, batch = workload.jax_loss(), workload.jax_params(), workload.jax_batch()
    gradient = jax.jit(jax.grad(loss_fn))
    grad = timing.measure(lambda: gradient(params, batch), repeats)
    table.add(workload.name, "JAX gradient", timing.seconds(grad.median),
              ", ".join(filter(None, (f"compile {timing.seconds(grad.compile)}",
                                      jax_peak_memory()))))
    v = rademacher(jax.random.key(1), params)
    one_shot = timing.measure(lambda: hessjax.hvp(loss_fn, params, batch, v), repeats)
    table.add(workload.name, "hessjax.hvp (one-shot, jvp of grad) / JAX gradient",
              ratio(one_shot.median, grad.median),
              ", ".join(filter(None, (timing.seconds(one_shot.median), jax_peak_memory()))))
    matvec = hessjax.hvp_fn(loss_fn, params, batch)
    jax.block_until_ready(matvec)
    table.add(workload.name, "hessjax.hvp_fn operator (linearized gradient) held", "",
              jax_peak_memory())
    apply = jax.jit(lambda m, probes: jax.vmap(m)(probes))
    probes = rademacher(jax.random.key(0), params, CHUNKS[0])
    chunk = timing.measure(lambda: apply(matvec, probes), repeats)
    per_probe = chunk.median / CHUNKS[0]
    table.add(workload.name, f"hvp_fn per probe, vmapped chunks of {CHUNKS[0]} / JAX gradient",
              ratio(per_probe, grad.median),
              ", ".join(filter(None, (f"{timing.seconds(per_probe)} per probe", jax_peak_memory()))))


def trace_figure(workload: Workload, table: timing.Table, repeats: int,
                 device: str | None) -> None:
    """A ``NUM_PROBES``-probe Hutchinson trace: hessjax (chunks of 10) against PyHessian."""
    loss_fn, params, batch = workload.jax_loss(), workload.jax_params(), workload.jax_batch()

    def run():
        return hessjax.trace(hessjax.hvp_fn(loss_fn, params, batch), params, jax.random.key(0),
                             num_matvecs=NUM_PROBES, chunk_size=10)

    result = timing.measure(run, repeats)
    table.add(workload.name, f"{NUM_PROBES}-probe trace: hessjax.trace chunk_size=10",
              timing.seconds(result.median),
              ", ".join(filter(None, (f"first call {timing.seconds(result.first)}",
                                      f"estimate {float(run().value):.4g}", jax_peak_memory()))))
    if device is None:
        return
    try:
        calls = []
        theirs = timing.measure(
            lambda: calls.append(peers.pyhessian_trace(workload, NUM_PROBES, device)),
            max(1, repeats - 1), lambda r: r)
    except Exception as error:  # noqa: BLE001 - a peer that fails to run is a result
        table.add(workload.name, f"{NUM_PROBES}-probe trace: PyHessian", "failed",
                  timing.describe(error))
        return
    table.add(workload.name, f"{NUM_PROBES}-probe trace: PyHessian trace(maxIter, tol=-inf)",
              timing.seconds(theirs.median),
              f"first call {timing.seconds(theirs.first)}, estimate {calls[-1][0]:.4g}, "
              f"probes used per call {[used for _, used in calls]}")
    table.add(workload.name, f"{NUM_PROBES}-probe trace: PyHessian / hessjax (speed-up)",
              f"{theirs.median / result.median:.1f}x", "target: at least 10x on GPU")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (checks the script)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per figure")
    parser.add_argument("--skip-check", action="store_true",
                        help="skip the JAX/PyTorch agreement check (saves its compile time)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated subset of {','.join(WORKLOADS)} (default: both)")
    args = parser.parse_args(argv)
    try:
        names = tuple(filter(None, args.workloads.split(",")))
        check_workloads(names)  # Before anything is built or measured.
    except ValueError as error:
        parser.error(f"--workloads: {error}")
    jax.config.update("jax_default_matmul_precision", "highest")
    device = torch_device()
    out = os.environ.get("OUT")
    header = "\n".join([f"## GPU benchmark {timing.now()}{' (--tiny)' if args.tiny else ''}", "",
                        f"- machine: {timing.machine()}",
                        f"- versions: {timing.versions_line()}",
                        f"- PyTorch device: {device}; float32 matmuls without TF32 in both"])
    print(header, flush=True)
    table = timing.RecordingTable(pathlib.Path(out) / "gpu_results.md" if out else None, header)
    checked = []
    # First, for every workload, the figures the targets are about, so that a run cut short by
    # its time limit still has them; then the remaining product figures.
    for workload in workloads(args.tiny, names):
        table.add(workload.name, "parameters", f"{workload.num_params:,}")
        if device is not None and not args.skip_check:
            try:
                errors = check_agreement(workload, hvp=hessjax.hvp, device=device,
                                         rtol=1e-4 if device == "cpu" else AGREEMENT_RTOL_GPU)
            except AssertionError as error:
                table.add(workload.name, "JAX vs torch agreement", "FAILED: not timed", str(error))
                continue
            table.add(workload.name, "JAX vs torch relative error: loss / gradient / HVP",
                      " / ".join(f"{e:.1e}" for e in errors.values()))
        checked.append(workload)
        headline_figures(workload, table, args.repeats)
        trace_figure(workload, table, max(2, args.repeats // 2), device)
    for workload in checked:
        # Peak memory stays out of these rows: JAX's peak cannot be reset, and earlier rows
        # (the trace, the other workload) needed more.
        product_figures(workload, table, args.repeats, chunks=CHUNKS[1:], extras=True,
                        use_torch=device is not None, device=device or "cpu")

if __name__ == "__main__":
    main()
