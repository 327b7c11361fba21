"""The peers' side: PyTorch Hessian-vector products, PyHessian, curvlinops and matfree.

Each peer is driven the way its documentation shows, on the same weights and batch as the JAX side
(see :mod:`benchmarks.workloads`). PyTorch is imported lazily so that the JAX-only parts of the
benchmarks (and their smoke test) run without it.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.flatten_util
import numpy as np

from benchmarks.workloads import Workload, from_torch_layout


class TorchHessian:
    """PyTorch gradients and Hessian-vector products for one workload and batch.

    Attributes:
        model: the ``torch.nn.Module`` (weights copied from the workload).
        criterion: ``criterion(logits, labels) -> loss``.
        inputs: the batch inputs (NCHW for images).
        labels: the batch labels.
        params: the model's parameters, in ``jax.tree_util.tree_leaves`` order of the workload.
    """

    def __init__(self, workload: Workload, device: str = "cpu"):
        import torch

        self.torch = torch
        self.device = device
        self.workload = workload
        self.model = workload.torch_model(device)
        self.criterion = workload.torch_criterion()
        self.inputs, self.labels = workload.torch_batch(device)
        self.params = list(self.model.parameters())
        self.names = [name for name, _ in self.model.named_parameters()]

    def sync(self, result: Any = None) -> Any:
        """Waits for queued device work (a no-op on CPU)."""
        if self.device != "cpu":
            self.torch.cuda.synchronize()
        return result

    def reset_peak_memory(self) -> None:
        if self.device != "cpu":
            self.torch.cuda.reset_peak_memory_stats()

    def peak_memory(self) -> str:
        """The device's peak allocated memory since the last reset (empty on CPU)."""
        if self.device == "cpu":
            return ""
        return f"torch peak {self.torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"

    def loss(self):
        return self.criterion(self.model(self.inputs), self.labels)

    def rademacher(self, generator=None) -> list:
        """One Rademacher probe, a list of tensors shaped like the parameters."""
        return [self.torch.randint(0, 2, p.shape, generator=generator, device=self.device)
                .to(p.dtype) * 2 - 1 for p in self.params]

    def gradient(self) -> tuple:
        return self.torch.autograd.grad(self.loss(), self.params)

    def double_backward_hvp(self, v: list) -> tuple:
        """``H v`` by reverse-over-reverse from scratch: forward, backward with graph, backward."""
        grads = self.torch.autograd.grad(self.loss(), self.params, create_graph=True)
        return self.torch.autograd.grad(grads, self.params, grad_outputs=v)

    def gradient_graph(self) -> tuple:
        """The gradient with its graph kept (PyHessian builds this once per batch)."""
        return self.torch.autograd.grad(self.loss(), self.params, create_graph=True)

    def reused_graph_hvp(self, graph: tuple, v: list) -> tuple:
        """``H v`` as PyHessian computes it: one backward through a kept gradient graph."""
        return self.torch.autograd.grad(graph, self.params, grad_outputs=v, retain_graph=True)

    def functional_hvp(self, v: list) -> tuple:
        """``H v`` forward-over-reverse: ``torch.func`` ``jvp`` of ``grad``, as in curvlinops."""
        from torch.func import functional_call, grad, jvp

        primals = {name: p.detach() for name, p in zip(self.names, self.params, strict=True)}
        tangents = dict(zip(self.names, v, strict=True))

        def loss(weights):
            return self.criterion(functional_call(self.model, weights, (self.inputs,)), self.labels)

        return jvp(grad(loss), (primals,), (tangents,))[1]

    def to_canonical(self, tensors) -> Any:
        """Torch parameter-shaped tensors as a numpy pytree in the workload's canonical layout."""
        if isinstance(tensors, dict):
            tensors = [tensors[name] for name in self.names]
        leaves = [from_torch_layout(t.detach().cpu().numpy()) for t in tensors]
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(self.workload.params),
                                            leaves)


def _pyhessian(torch_side: TorchHessian):
    """PyHessian's ``hessian`` object on one batch (it runs forward and backward with a graph)."""
    from pyhessian import hessian

    with warnings.catch_warnings():
        # PyHessian calls ``backward(create_graph=True)``, which PyTorch warns about; not ours.
        warnings.filterwarnings("ignore", "Using backward\\(\\) with create_graph=True")
        return hessian(torch_side.model, torch_side.criterion,
                       data=(torch_side.inputs, torch_side.labels),
                       cuda=torch_side.device != "cpu")


def pyhessian_trace(workload: Workload, num_probes: int, device: str = "cpu"
                    ) -> tuple[float, int]:
    """PyHessian's Hutchinson trace with all ``num_probes`` probes (graph built in its constructor).

    PyHessian's stopping rule divides the change of the running mean by the *signed* mean, so with
    its documented ``tol=0`` it stops after two probes whenever that mean is negative (common on an
    indefinite Hessian at initialization). ``tol=-inf`` never stops early: every call uses exactly
    ``num_probes`` probes, the same work as the hessjax call it is compared with.

    Returns:
        The estimate and the number of probes PyHessian used.
    """
    torch_side = TorchHessian(workload, device)
    samples = _pyhessian(torch_side).trace(maxIter=num_probes, tol=float("-inf"))
    torch_side.sync()
    return float(np.mean(samples)), len(samples)


def pyhessian_top_eigenvalue(workload: Workload) -> float:
    """PyHessian's power iteration (its defaults: up to 100 steps, relative tolerance 1e-3)."""
    estimator = _pyhessian(TorchHessian(workload))
    return float(estimator.eigenvalues(top_n=1)[0][0])


def pyhessian_density(workload: Workload, num_steps: int, num_probes: int = 1):
    """PyHessian's stochastic Lanczos quadrature: ``(nodes, weights)`` as numpy arrays.

    Raises whatever PyHessian raises (0.1 calls ``torch.eig``, removed from current PyTorch).
    """
    estimator = _pyhessian(TorchHessian(workload))
    nodes, weights = estimator.density(iter=num_steps, n_v=num_probes)
    return np.asarray(nodes, np.float64).ravel(), np.asarray(weights, np.float64).ravel() / len(
        nodes)


def curvlinops_trace(workload: Workload, num_probes: int) -> float:
    """curvlinops' ``hutchinson_trace`` on its ``HessianLinearOperator`` (construction included)."""
    from curvlinops import HessianLinearOperator, hutchinson_trace

    torch_side = TorchHessian(workload)
    operator = HessianLinearOperator(torch_side.model, torch_side.criterion, torch_side.params,
                                     [(torch_side.inputs, torch_side.labels)],
                                     check_deterministic=False)
    return float(hutchinson_trace(operator, num_probes))


def matfree_trace(matvec, like: Any, key: jax.Array, num_probes: int, *parameters) -> jax.Array:
    """matfree's Monte-Carlo trace estimator with Rademacher probes, all probes in one ``vmap``.

    ``matvec(v, *parameters)`` is matfree's operator convention; pass the weights and batch as
    ``parameters`` so they are arguments of the compiled function rather than constants in it.
    """
    from matfree import stochtrace

    sampler = stochtrace.sampler_signs(like, num=num_probes)
    estimate = stochtrace.estimator_monte_carlo(stochtrace.monte_carlo_trace(), sampler)
    return estimate(matvec, key, *parameters)


# ----------------------------------------------------------------------------- JAX trace peers

# The trace estimators of the JAX peers, by the names hessjax uses for the same algorithms.
# XNysTrace (Nyström sketch, XTrace's exchangeable estimate) assumes a positive semi-definite operator.
JAX_PEER_METHODS = {"traceax": ("hutchinson", "hutch++", "xtrace", "xnystrace"),
                    "matfree": ("hutchinson", "xtrace", "xnystrace")}
PSD_ONLY = ("xnystrace",)


def products_spent(method: str, num_matvecs: int) -> int:
    """The products each library's ``method`` spends for a budget (the same rule for all three)."""
    multiple = {"hutch++": 3, "xtrace": 2}.get(method, 1)
    return num_matvecs - num_matvecs % multiple


def traceax_trace(method: str, matvec, like: Any, key: jax.Array, num_matvecs: int) -> jax.Array:
    """traceax's estimator ``method`` on ``matvec`` as a lineax ``FunctionLinearOperator``.

    traceax works on flat vectors: the operator is ``x -> ravel(matvec(unravel(x)))``, tagged
    symmetric (and positive semi-definite for XNysTrace, which refuses any other operator). Its
    Rademacher sampler draws integers by default, which a floating-point product cannot take; it
    draws in the operator's dtype here. Hutch++ and XTrace use the documented default samplers
    (Rademacher; the sphere, for the "improved" XTrace and XNysTrace).
    """
    import lineax as lx
    import traceax as tx

    flat, unravel = jax.flatten_util.ravel_pytree(like)
    tags = (lx.symmetric_tag, lx.positive_semidefinite_tag) if method in PSD_ONLY else (
        lx.symmetric_tag)
    operator = lx.FunctionLinearOperator(
        lambda x: jax.flatten_util.ravel_pytree(matvec(unravel(x)))[0],
        jax.ShapeDtypeStruct(flat.shape, flat.dtype), tags)
    estimator = {"hutchinson": lambda: tx.HutchinsonEstimator(tx.RademacherSampler(flat.dtype)),
                 "hutch++": lambda: tx.HutchPlusPlusEstimator(tx.RademacherSampler(flat.dtype)),
                 "xtrace": tx.XTraceEstimator, "xnystrace": tx.XNysTraceEstimator}[method]()
    return estimator.estimate(key, operator, num_matvecs)[0]


def matfree_estimate(method: str, matvec, like: Any, key: jax.Array, num_matvecs: int
                     ) -> jax.Array:
    """matfree's ``stochtrace`` estimator ``method`` spending ``num_matvecs`` products.

    Hutchinson: ``estimator_monte_carlo`` with Rademacher probes (one ``vmap`` over all of them);
    XTrace (``num_matvecs / 2`` samples, two products each) and XNysTrace (one product per sample):
    ``estimator_leave_one_out`` with sphere samples, which their resphering step asks for.
    """
    from matfree import stochtrace

    apply = lambda v, operator: operator(v)
    if method == "hutchinson":
        return matfree_trace(apply, like, key, num_matvecs, matvec)
    integrand, num = {"xtrace": (stochtrace.leave_one_out_xtrace, num_matvecs // 2),
                      "xnystrace": (stochtrace.leave_one_out_xnystrace, num_matvecs)}[method]
    estimate = stochtrace.estimator_leave_one_out(integrand(), stochtrace.sampler_sphere(like, num=num))
    return estimate(apply, key, matvec)
