"""Checks that a change to the library leaves its numbers alone: save every estimator's results on a
few operators before the change, compare after.

    python -m benchmarks.same_results --save /tmp/before.npz     # on the old code
    python -m benchmarks.same_results --compare /tmp/before.npz  # on the new code

Each result is compared bit for bit and, where it differs, by its largest difference relative to
the scale of its operator's results (the largest absolute entry of any of them): float32 rounding
is about 1e-7 of that. Ritz vectors are compared up to their sign, and each spectral density also
through its moments and distribution function (the weights of repeated nodes are not unique).
Operators: the README's MLP (``hvp_fn``, float32), the same loss over four batches
(``dataset_hvp_fn``), a 40 x 40 matrix with a known spectrum and a rank-3 one (where Hutch++ and
XTrace are exact), each eagerly and under ``jit``; ``fisher_trace`` and ``hessian_summary``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import hessjax
from benchmarks.compile_counts import _digits, _small_mlp


def _matrix(eigenvalues: np.ndarray, seed: int) -> Callable[[Any], Any]:
    basis, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigenvalues),) * 2))
    matrix = jnp.asarray((basis * eigenvalues) @ basis.T, jnp.float32)
    return jax.tree_util.Partial(lambda a, v: a @ v, matrix)


def results() -> dict[str, Any]:
    """Every estimator's results on the operators above, by name."""
    import optax

    params, logits_fn = _small_mlp()
    x, y = _digits(1024)
    loss_fn = lambda p, batch: optax.softmax_cross_entropy_with_integer_labels(
        logits_fn(p, batch[0]), batch[1]).mean()
    operators = {
        "mlp": (hessjax.hvp_fn(loss_fn, params, (x[:256], y[:256])), params),
        "dataset": (hessjax.dataset_hvp_fn(loss_fn, params, (x.reshape(4, 256, 64),
                                                             y.reshape(4, 256))), params),
        "cubic": (_matrix(np.linspace(-3, 3, 40) ** 3, 0), jnp.zeros(40)),
        "rank3": (_matrix(np.r_[[5.0, 2.0, -1.0], np.zeros(37)], 1), jnp.zeros(40)),
    }
    key = jax.random.key(0)
    out: dict[str, Any] = {}
    for name, (matvec, like) in operators.items():
        def add(label: str, fn: Callable[..., Any], *args: Any, **options: Any) -> None:
            out[f"{name}/{label}"] = fn(matvec, like, key, *args, **options)
            jitted = jax.jit(lambda m, k: fn(m, like, k, *args, **options))
            out[f"{name}/{label}/jit"] = jitted(matvec, key)

        for method, budgets in (("hutchinson", (2, 7, 20)), ("hutch++", (6, 30, 60, 150)),
                                ("xtrace", (4, 21, 40, 100))):
            for budget in budgets:
                add(f"trace/{method}/{budget}", hessjax.trace, num_matvecs=budget, method=method)
            add(f"trace/{method}/chunk3", hessjax.trace, num_matvecs=budgets[-1], method=method,
                chunk_size=3)
            add(f"trace/{method}/gaussian", hessjax.trace, num_matvecs=budgets[1], method=method,
                probe="gaussian")
        add("trace_until/hutchinson", hessjax.trace_until, rtol=0.05, max_matvecs=97, chunk_size=4)
        for method in ("hutch++", "xtrace"):
            out[f"{name}/trace_until/{method}"] = hessjax.trace_until(
                matvec, like, key, rtol=0.01, max_matvecs=120, method=method)
        add("diagonal/1", hessjax.diagonal, num_matvecs=1)
        add("diagonal/13", hessjax.diagonal, num_matvecs=13, chunk_size=5)
        add("block_traces", hessjax.block_traces, num_matvecs=13)
        add("lanczos", hessjax.lanczos, num_steps=25)
        add("top_eigenvalues", hessjax.top_eigenvalues, k=3, num_steps=25)
        add("spectral_density", hessjax.spectral_density, num_probes=3, num_steps=25)
        add("spectral_density/gaussian", hessjax.spectral_density, num_probes=2, num_steps=12,
            probe="gaussian")
        for label in [k for k in out if k.startswith(f"{name}/spectral_density")]:
            density = out[label]
            scale = float(jnp.max(jnp.abs(density.nodes)))
            out[f"{label}/moments"] = jnp.stack([density.moment(p) for p in range(5)])
            out[f"{label}/cdf"] = density.cdf(jnp.linspace(-scale, scale, 9))
    out["fisher_trace"] = hessjax.fisher_trace(logits_fn, params, x[:256], key, num_samples=9)
    out["fisher_trace/chunk4"] = hessjax.fisher_trace(logits_fn, params, x[:256], key,
                                                      num_samples=9, chunk_size=4)
    out["fisher_trace/jit"] = jax.jit(lambda p, k: hessjax.fisher_trace(
        logits_fn, p, x[:256], k, num_samples=9))(params, key)
    batches = (x.reshape(4, 256, 64), y.reshape(4, 256))
    for method in ("hutchinson", "xtrace"):
        summary = hessjax.hessian_summary(loss_fn, params, batches, key, method=method)
        out[f"hessian_summary/{method}"] = summary._replace(seconds=0.0)
    return out


def flatten(results: dict[str, Any]) -> dict[str, np.ndarray]:
    flat = {}
    for name, result in results.items():
        for path, leaf in jax.tree_util.tree_leaves_with_path(result):
            flat[name + jax.tree_util.keystr(path)] = np.asarray(leaf)
    return flat


def compare(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> bool:
    missing = sorted(set(before) ^ set(after))
    if missing:
        print(f"different entries: {missing}")
    scales: dict[str, float] = {}
    for name, old in before.items():
        operator = name.split("/")[0]
        if old.size and np.issubdtype(old.dtype, np.floating):
            scales[operator] = max(scales.get(operator, 0.0), float(np.nanmax(np.abs(old))))
    identical, close, far = 0, [], []
    for name in sorted(set(before) & set(after)):
        old, new = before[name].astype(np.float64), after[name].astype(np.float64)
        if old.shape == new.shape and before[name].tobytes() == after[name].tobytes():
            identical += 1
            continue
        if old.shape != new.shape:
            far.append((np.inf, name))
            continue
        error = np.abs(old - new)
        if "vectors" in name:  # a Ritz vector's sign is arbitrary: compare each row up to it
            error = np.minimum(error, np.abs(old + new))
        difference = float(np.nanmax(error)) / max(scales.get(name.split("/")[0], 0.0), 1e-30)
        (close if difference < 1e-5 else far).append((difference, name))
    print(f"{identical} identical, {len(close)} within 1e-5 of their operator's scale, {len(far)} "
          "further")
    for difference, name in sorted(close + far, reverse=True)[:40]:
        print(f"  {difference:.2e}  {name}")
    return not far and not missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", help="write the results here")
    parser.add_argument("--compare", help="compare with the results saved here")
    args = parser.parse_args()
    flat = flatten(results())
    if args.save:
        np.savez(args.save, **flat)
        print(f"saved {len(flat)} arrays to {args.save}")
    if not args.compare:
        return
    with np.load(args.compare) as stored:
        before = {name: stored[name] for name in stored.files}
    sys.exit(0 if compare(before, flat) else 1)


if __name__ == "__main__":
    main()
