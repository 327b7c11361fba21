"""Figures shared by the CPU and GPU benchmarks: product costs as multiples of a gradient."""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

import hessjax
from benchmarks import peers, timing
from benchmarks.workloads import Workload


def rademacher(key: jax.Array, like, num: int | None = None):
    """Rademacher probes shaped like ``like`` (with a leading axis ``num`` unless it is None)."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    keys = jax.random.split(key, len(leaves))
    shape = () if num is None else (num,)
    return jax.tree_util.tree_unflatten(treedef, [
        jax.random.rademacher(k, shape + leaf.shape, leaf.dtype)
        for k, leaf in zip(keys, leaves, strict=True)])


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x"


def no_note() -> str:
    return ""


def product_figures(workload: Workload, table: timing.Table, repeats: int, *,
                    chunks: tuple[int, ...], extras: bool = True, use_torch: bool = True,
                    device: str = "cpu", jax_memory: Callable[[], str] = no_note,
                    ) -> dict[str, float]:
    """Times a gradient and Hessian-vector products in JAX and PyTorch, as per-probe / gradient.

    Args:
        workload: the model and batch.
        table: where the rows go.
        repeats: timed calls per figure (after a first, compiling call).
        chunks: probe-chunk sizes for ``hessjax.hvp_fn`` applied to ``vmap``ped probes.
        extras: also time JAX reverse-over-reverse and ``torch.func`` forward-over-reverse.
        use_torch: time the PyTorch side (double backward and PyHessian's reused graph).
        device: the PyTorch device.
        jax_memory: called after each JAX figure; its text goes into the row's note (GPU memory).

    Returns:
        ``jax_gradient`` and ``per_probe_{chunk}`` in seconds.
    """
    name = workload.name
    loss_fn, params, batch = workload.jax_loss(), workload.jax_params(), workload.jax_batch()
    key = jax.random.key(0)
    v = rademacher(key, params)

    def note(text: str) -> str:
        return ", ".join(filter(None, (text, jax_memory())))

    gradient = jax.jit(jax.grad(loss_fn))
    jax_grad = timing.measure(lambda: gradient(params, batch), repeats)
    table.add(name, "JAX gradient", timing.seconds(jax_grad.median),
              note(f"compile {timing.seconds(jax_grad.compile)}"))

    one_shot = timing.measure(lambda: hessjax.hvp(loss_fn, params, batch, v), repeats)
    table.add(name, "hessjax.hvp (one-shot, jvp of grad) / JAX gradient",
              ratio(one_shot.median, jax_grad.median), note(timing.seconds(one_shot.median)))

    if extras:
        @jax.jit
        def reverse_over_reverse(params, batch, v):
            directional = lambda p: optax.tree_utils.tree_vdot(jax.grad(loss_fn)(p, batch), v)
            return jax.grad(directional)(params)

        rr = timing.measure(lambda: reverse_over_reverse(params, batch, v), repeats)
        table.add(name, "JAX reverse-over-reverse HVP / JAX gradient",
                  ratio(rr.median, jax_grad.median), timing.seconds(rr.median))

    linearize = timing.measure(lambda: hessjax.hvp_fn(loss_fn, params, batch), repeats)
    table.add(name, "hessjax.hvp_fn (linearize once) / JAX gradient",
              ratio(linearize.median, jax_grad.median),
              note(f"{timing.seconds(linearize.median)}, compile "
                   f"{timing.seconds(linearize.compile)}"))
    figures = {"jax_gradient": jax_grad.median}
    figures.update(_chunk_figures(workload, table, repeats, chunks, jax_grad.median, note))
    if use_torch:
        _torch_figures(workload, table, repeats, device, extras)
    return figures


def _chunk_figures(workload: Workload, table: timing.Table, repeats: int, chunks: tuple[int, ...],
                   gradient_seconds: float, note: Callable[[str], str]) -> dict[str, float]:
    # A function of its own so that the linearization's residuals are freed on return, before
    # PyTorch needs the device memory.
    name = workload.name
    loss_fn, params, batch = workload.jax_loss(), workload.jax_params(), workload.jax_batch()
    matvec = hessjax.hvp_fn(loss_fn, params, batch)
    apply = jax.jit(lambda m, probes: jax.vmap(m)(probes))
    figures = {}
    for chunk in chunks:
        label = f"hvp_fn per probe, vmapped chunks of {chunk} / JAX gradient"
        try:
            probes = rademacher(jax.random.key(0), params, chunk)
            per_chunk = timing.measure(lambda probes=probes: apply(matvec, probes), repeats)
        except Exception as error:  # noqa: BLE001 - out of memory is a result for large chunks
            table.add(name, label, "failed", timing.describe(error))
            continue
        figures[f"per_probe_{chunk}"] = per_chunk.median / chunk
        table.add(name, label, ratio(per_chunk.median / chunk, gradient_seconds),
                  note(f"{timing.seconds(per_chunk.median / chunk)} per probe"))
    return figures


def _torch_figures(workload: Workload, table: timing.Table, repeats: int, device: str,
                   extras: bool) -> None:
    name = workload.name
    torch_side = peers.TorchHessian(workload, device)
    v = torch_side.rademacher()

    def run(label, fn, reference=None):
        torch_side.reset_peak_memory()
        result = timing.measure(fn, repeats, torch_side.sync)
        value = timing.seconds(result.median) if reference is None else ratio(
            result.median, reference)
        table.add(name, label, value, ", ".join(filter(None, (
            "" if reference is None else timing.seconds(result.median),
            torch_side.peak_memory()))))
        return result.median

    torch_grad = run("torch gradient", torch_side.gradient)
    run("torch double-backward HVP / torch gradient", lambda: torch_side.double_backward_hvp(v),
        torch_grad)
    graph = torch_side.gradient_graph()
    run("PyHessian per probe (graph reused) / torch gradient",
        lambda: torch_side.reused_graph_hvp(graph, v), torch_grad)
    if extras:
        run("torch.func jvp(grad) HVP / torch gradient", lambda: torch_side.functional_hvp(v),
            torch_grad)
