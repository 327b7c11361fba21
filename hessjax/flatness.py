r"""Flatness measures that do not change when a rescaling leaves the network's function unchanged.

The Hessian trace is not such a measure. If a diagonal :math:`D` is a symmetry of the loss,
:math:`L(D\theta) = L(\theta)` for every :math:`\theta` (a ReLU neuron's input weights times
:math:`\alpha > 0` and its output weights times :math:`1/\alpha`; the weights feeding a LayerNorm
times :math:`\alpha`), then differentiating twice gives

.. math::
    H(\theta) = D\, H(D\theta)\, D, \qquad\text{so}\qquad H(D\theta) = D^{-1} H(\theta) D^{-1}:

a flat minimum becomes as sharp as one likes by moving along the symmetry, while the network computes
the same function. The measures here transform the operator so that :math:`D` cancels:

* :func:`adaptive_operator` (on :func:`scaled_operator`): :math:`T A T` with
  :math:`T = \operatorname{diag}(|\theta|)`. Its trace is the average-case and its top eigenvalue the
  worst-case adaptive sharpness, to second order (:func:`adaptive_sharpness`).
* :func:`relative_flatness_operator`: the Hessian with respect to a multiplicative perturbation of one
  layer's inputs, whose trace is the relative flatness of Petzka et al. (:func:`relative_flatness`).
* :func:`effective_rank`: how many directions carry the curvature, from a spectral density or from
  eigenvalues (of the Hessian or, invariantly, of either operator above).

The operator builders take any matvec (``hvp_fn``, ``dataset_hvp_fn``, ``ggn_fn``, your own) and
return one, so every estimator composes with them (``trace``, ``trace_until``, ``top_eigenvalues``,
``spectral_density``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hessjax import _checks
from hessjax._common import ByIdentity, as_pytree_fn
from hessjax.products import hvp_fn
from hessjax.spectrum import SpectralDensity
from hessjax.trace import TraceEstimate, trace

Array = jax.Array
Matvec = Callable[[Any], Any]
LossFn = Callable[[Any, Any], Array]
_HIGHEST = jax.lax.Precision.HIGHEST


def _check_same_layout(reference: Any, v: Any, reference_name: str) -> None:
    """Trace-time check that the vector ``v`` has the structure and shapes of ``reference``."""
    leaves, treedef = jax.tree_util.tree_flatten(v)
    expected_leaves, expected = jax.tree_util.tree_flatten(reference)
    if treedef != expected:
        raise ValueError(f"The operator got a vector with pytree structure {treedef}; expected the "
                         f"structure of `{reference_name}`, {expected}.")
    for index, (leaf, like) in enumerate(zip(leaves, expected_leaves)):
        if jnp.shape(leaf) != jnp.shape(like):
            raise ValueError(f"Leaf {index} of the operator's vector has shape {jnp.shape(leaf)}; "
                             f"expected {jnp.shape(like)}, the shape of the same leaf of "
                             f"`{reference_name}`.")


def _scaled_product(matvec: Any, scale: Any, v: Any) -> Any:
    _check_same_layout(scale, v, "scale")
    image = matvec(jax.tree_util.tree_map(jnp.multiply, scale, v))
    return jax.tree_util.tree_map(jnp.multiply, scale, image)


def scaled_operator(matvec: Matvec, scale: Any) -> jax.tree_util.Partial:
    r"""The operator :math:`v \mapsto S A S v` with :math:`S = \operatorname{diag}(s)`.

    If :math:`A` is the Hessian of :math:`L` at :math:`\theta`, then :math:`S A S` is the Hessian of
    :math:`\delta \mapsto L(\theta + S\delta)` at :math:`\delta = 0`: curvature measured in the units
    that :math:`s` assigns to each coordinate. It is symmetric when :math:`A` is, and has the same
    inertia (numbers of positive, negative and zero eigenvalues) when no :math:`s_i` is zero.

    Args:
        matvec: ``v -> A v`` for a symmetric ``A`` on pytrees shaped like ``scale``.
        scale: a pytree of floating arrays, the diagonal :math:`s` (e.g. :func:`adaptive_scale`).

    Returns:
        A ``jax.tree_util.Partial`` ``v -> S A S v`` on pytrees like ``scale``: a pytree whose leaves
        are ``scale`` and those of ``matvec``, so it can be an argument of jitted estimators.

    Example:
        >>> import jax.numpy as jnp, hessjax
        >>> operator = hessjax.scaled_operator(lambda v: 3.0 * v, jnp.array([1.0, 2.0]))
        >>> operator(jnp.array([1.0, 1.0]))
        Array([ 3., 12.], dtype=float32)
    """
    _checks.check_float_tree(scale, "scale")
    return jax.tree_util.Partial(_scaled_product, as_pytree_fn(matvec), scale)


def _check_eta(eta: Any) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float, np.integer, np.floating)):
        raise TypeError(f"`eta` must be a number >= 0; got {eta!r} ({type(eta).__name__}).")
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"`eta` must be a finite number >= 0 (0 gives exact invariance); got {eta}.")
    return float(eta)


def adaptive_scale(params: Any, *, eta: float = 0.0) -> Any:
    r"""The adaptive scale :math:`|\theta| + \eta` of each parameter, as a pytree like ``params``.

    With :math:`\eta = 0` the scale is equivariant under every diagonal symmetry :math:`D` of the loss:
    :math:`|D\theta| = |D|\,|\theta|`, which is what makes :func:`adaptive_operator` invariant. A
    parameter at zero (a bias at initialization) then gets no perturbation; :math:`\eta > 0` (ASAM
    uses 0.01) perturbs it, at the price of exact invariance.

    Args:
        params: a pytree of floating arrays.
        eta: a number ``>= 0`` added to every :math:`|\theta_i|`.

    Returns:
        A pytree like ``params``.

    Example:
        >>> import jax.numpy as jnp, hessjax
        >>> hessjax.adaptive_scale({"w": jnp.array([-2.0, 0.0])}, eta=0.5)
        {'w': Array([2.5, 0.5], dtype=float32)}
    """
    _checks.check_float_tree(params, "params")
    eta = _check_eta(eta)
    return jax.tree_util.tree_map(lambda x: jnp.abs(x) + jnp.asarray(eta, x.dtype), params)


def adaptive_operator(matvec: Matvec, params: Any, *, eta: float = 0.0) -> jax.tree_util.Partial:
    r"""The operator :math:`T A T` with :math:`T = \operatorname{diag}(|\theta| + \eta)`.

    For the Hessian :math:`A = H(\theta)` and a diagonal symmetry :math:`D` of the loss
    (:math:`L(D\theta) = L(\theta)`), :math:`H(D\theta) = D^{-1} H(\theta) D^{-1}`, so with
    :math:`\eta = 0`

    .. math::
        \operatorname{diag}(|D\theta|)\, H(D\theta)\, \operatorname{diag}(|D\theta|)
        = \Sigma\, \operatorname{diag}(|\theta|)\, H(\theta)\, \operatorname{diag}(|\theta|)\, \Sigma,
        \qquad \Sigma = \operatorname{sign}(D):

    the same matrix for a positive :math:`D` (ReLU and LayerNorm rescalings), and an orthogonal
    similarity of it for sign flips (odd activations), so the trace and the spectrum of
    :math:`T H T` are invariant under every such rescaling. Both are adaptive sharpness to second
    order, for perturbations :math:`T\delta`:

    .. math::
        \mathbb E_{\delta \sim \mathcal N(0, \sigma^2 I)} L(\theta + T\delta) - L(\theta)
        \approx \tfrac{\sigma^2}{2} \operatorname{tr}(T H T),
        \qquad
        \max_{\|\delta\|_2 \le \rho} L(\theta + T\delta) - L(\theta)
        \approx \tfrac{\rho^2}{2} \max(\lambda_{\max}(T H T), 0),

    the average case (Andriushchenko et al. 2023) and the worst case (Kwon et al. 2021). The first
    holds anywhere (the gradient term has mean zero); the second at a critical point, since away from
    one the first-order term :math:`\rho \|T \nabla L\|` dominates the worst case.

    Args:
        matvec: ``v -> A v`` on pytrees like ``params`` (``hvp_fn``, ``dataset_hvp_fn``, ``ggn_fn``).
        params: the parameters :math:`\theta` at which ``A`` is taken.
        eta: a number ``>= 0`` added to :math:`|\theta|` (:func:`adaptive_scale`); 0 for invariance.

    Returns:
        A ``jax.tree_util.Partial`` ``v -> T A T v`` on pytrees like ``params``.

    Example:
        The worst case, as the top eigenvalue of the adaptive operator:

        >>> import jax, jax.numpy as jnp, hessjax
        >>> loss = lambda p, x: jnp.sum((p["a"] * p["b"] * x - 1.0) ** 2)
        >>> params = {"a": jnp.array([2.0]), "b": jnp.array([0.5])}
        >>> operator = hessjax.adaptive_operator(hessjax.hvp_fn(loss, params, 1.0), params)
        >>> eig = hessjax.top_eigenvalues(operator, params, jax.random.key(0), k=1, num_steps=2)
        >>> round(float(eig.values[0]), 4)
        4.0

    References:
        Kwon, Kim, Park & Choi, "ASAM: Adaptive sharpness-aware minimization for scale-invariant
        learning of deep neural networks", ICML 2021. Andriushchenko, Croce, Müller, Hein & Flammarion,
        "A modern look at the relationship between sharpness and generalization", ICML 2023.
    """
    return scaled_operator(matvec, adaptive_scale(params, eta=eta))


def adaptive_sharpness(loss_fn: LossFn, params: Any, batch: Any, key: Array, *, num_matvecs: int,
                       method: str = "hutchinson", eta: float = 0.0, probe: str = "rademacher",
                       chunk_size: int | None = None) -> TraceEstimate:
    r"""Estimates :math:`\operatorname{tr}(T H T)`, :math:`T = \operatorname{diag}(|\theta| + \eta)`.

    The average-case adaptive sharpness to second order:
    :math:`\mathbb E_{\delta \sim \mathcal N(0, \sigma^2 I)} L(\theta + T\delta) - L(\theta) \approx
    \frac{\sigma^2}{2} \operatorname{tr}(T H T) = \frac{\sigma^2}{2} \sum_i \theta_i^2 H_{ii}`, unchanged
    (with ``eta=0``) by every diagonal rescaling of the parameters that leaves the loss unchanged (see
    :func:`adaptive_operator`). It is :func:`trace` of :func:`adaptive_operator` of :func:`hvp_fn`;
    compose those directly for a dataset (``dataset_hvp_fn``), a Gauss-Newton matrix, the worst case
    (``top_eigenvalues``) or a spectrum (``spectral_density``).

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``, pure.
        params: a pytree of floating arrays at which the Hessian is taken.
        batch: any pytree, passed to ``loss_fn``.
        key: a ``jax.random`` key; the same key probes the same vectors, so two checkpoints compared
            with one key share their probes.
        num_matvecs: the budget of Hessian-vector products (see :func:`trace`).
        method: ``"hutchinson"``, ``"hutch++"`` or ``"xtrace"``.
        eta: a number ``>= 0`` added to :math:`|\theta|`; 0 (the default) for exact invariance.
        probe: ``"rademacher"`` or ``"gaussian"``.
        chunk_size: products per compiled kernel (the memory knob of :func:`trace`).

    Returns:
        A :class:`TraceEstimate` of :math:`\operatorname{tr}(T H T)`.

    Example:
        >>> import jax, jax.numpy as jnp, hessjax
        >>> loss = lambda p, x: jnp.sum((p["a"] * p["b"] * x - 1.0) ** 2)
        >>> for scale in (1.0, 10.0):  # the same function; the raw Hessian trace grows about 100x
        ...     params = {"a": jnp.array([2.0 * scale]), "b": jnp.array([0.5 / scale])}
        ...     est = hessjax.adaptive_sharpness(loss, params, 1.0, jax.random.key(1), num_matvecs=4)
        ...     print(round(float(est.value), 4))
        4.0
        4.0

    References:
        Andriushchenko, Croce, Müller, Hein & Flammarion, "A modern look at the relationship between
        sharpness and generalization", ICML 2023. Kwon, Kim, Park & Choi, ICML 2021.
    """
    operator_ = adaptive_operator(hvp_fn(loss_fn, params, batch), params, eta=eta)
    return trace(operator_, params, key, num_matvecs=num_matvecs, method=method, probe=probe,
                 chunk_size=chunk_size)


class Operator(NamedTuple):
    """A symmetric operator together with the shapes of its vectors, ready for any estimator.

    Attributes:
        matvec: ``v -> A v``, a ``jax.tree_util.Partial`` (an argument of jitted estimators).
        like: an array with the shape and dtype of the vectors ``v``.
    """

    matvec: jax.tree_util.Partial
    like: Any


def _key_name(entry: Any) -> str:
    """A key-path entry (``DictKey``, ``SequenceKey``, ``GetAttrKey`` or a plain key) as a string."""
    if isinstance(entry, jax.tree_util.DictKey):
        return str(entry.key)
    if isinstance(entry, jax.tree_util.SequenceKey):
        return str(entry.idx)
    if isinstance(entry, jax.tree_util.GetAttrKey):
        return entry.name
    return str(entry)


class _Path:
    """Selects the leaf of ``params`` whose key path starts with ``keys`` (compared as strings).

    Matching leaf paths instead of indexing works for every pytree (dicts, lists, NNX state, Equinox
    modules), and a path may stop at a variable wrapper (an NNX ``Param``, whose leaf path ends in
    ``value``). Hashable by its keys, so operators built from equal paths share compiled code.
    """

    def __init__(self, keys: tuple[str, ...]):
        self.keys = keys

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.keys == self.keys

    def __hash__(self) -> int:
        return hash((type(self), self.keys))

    def __call__(self, params: Any) -> Any:
        paths = [(tuple(map(_key_name, path)), leaf)
                 for path, leaf in jax.tree_util.tree_leaves_with_path(params)]
        matches = [leaf for path, leaf in paths if path[:len(self.keys)] == self.keys]
        if len(matches) == 1:
            return matches[0]
        shown = ["/".join(path) for path, _ in paths]
        if not matches:
            raise ValueError(
                f"`layer` {'/'.join(self.keys)!r} matches no leaf of `params`; its leaves are "
                f"{shown[:12]}{' ...' if len(shown) > 12 else ''}.")
        raise ValueError(f"`layer` {'/'.join(self.keys)!r} matches {len(matches)} leaves of `params`; "
                         "expected the path of one kernel.")


def _selector(layer: Any) -> Callable[[Any], Any]:
    if isinstance(layer, str):
        return _Path(tuple(layer.split("/")))
    if isinstance(layer, (tuple, list)) and layer:
        return _Path(tuple(map(_key_name, layer)))
    if callable(layer):
        return ByIdentity(layer)
    raise TypeError(
        "`layer` must select one weight matrix of `params`: a path such as 'params/Dense_0/kernel' or "
        f"('params', 'Dense_0', 'kernel'), or a function params -> kernel; got {layer!r}.")


def _shapes(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype), tree)


def _select(selector: Callable[[Any], Any], params: Any) -> Array:
    """``selector(params)``, checked to be a 2-D floating kernel made of distinct entries of ``params``."""
    kernel = selector(params)
    if not isinstance(kernel, (jax.Array, np.ndarray)):
        raise TypeError(f"`layer` selected a {type(kernel).__name__}; expected a 2-D floating-point "
                        "array, a kernel of shape (inputs, neurons).")
    if not jnp.issubdtype(kernel.dtype, jnp.floating):
        raise TypeError(f"`layer` selected an array of dtype {kernel.dtype}; expected a floating dtype.")
    if kernel.ndim != 2:
        raise ValueError(
            f"`layer` selected an array of shape {kernel.shape}; expected a 2-D kernel of shape "
            "(inputs, neurons), Flax's Dense layout, where neuron s's weights are column s. Select a "
            "convolution's kernel reshaped, `lambda p: k(p).reshape(-1, k(p).shape[-1])`, and a "
            "PyTorch-layout (neurons, inputs) weight transposed, `lambda p: w(p).T`.")
    # Selecting then embedding distinct markers must give them back: true exactly when the function
    # picks distinct entries (S S^T = I). Evaluated on constants, so it also runs under `jit`.
    with jax.ensure_compile_time_eval():
        marker = jnp.arange(1, kernel.size + 1, dtype=kernel.dtype).reshape(kernel.shape)
        try:
            round_trip = selector(jax.linear_transpose(selector, _shapes(params))(marker)[0])
        except Exception as error:  # which error depends on what the function computes
            raise ValueError(f"`layer` must be a selection of entries of `params`; it is not linear "
                             f"({type(error).__name__}: {error}).") from error
        selects = bool(jnp.all(round_trip == marker))
    if not selects:
        raise ValueError(
            "`layer` must select distinct entries of `params` (a leaf, or a reshape, transpose or slice "
            "of one); it computes something else (a multiple, a sum or a constant).")
    return kernel


def _gram_factor(kernel: Array) -> Array:
    r"""A factor :math:`C` with :math:`C^\top C = W^\top W` and the fewest rows, equivariant under
    positive neuron rescaling: :math:`C(WD) = C(W) D`.

    :math:`C = W` when there are at most as many inputs as neurons, else the triangular factor ``R``
    of ``W = QR`` (Householder QR keeps the sign of each column, so it scales with it).
    """
    inputs, neurons = kernel.shape
    if inputs <= neurons:
        return kernel
    working = jnp.promote_types(kernel.dtype, jnp.float32)  # no QR in half precision
    return jnp.linalg.qr(kernel.astype(working), mode="r").astype(kernel.dtype)


class _FeatureProduct:
    """``V -> [A (V C)]_W C^T`` for the kernel ``W = selector(params)`` and its factor ``C``.

    Equal when the selectors are (a path by its keys, a function by identity): the static part of
    the operator, so operators of later checkpoints reuse the compiled estimators.
    """

    def __init__(self, selector: Callable[[Any], Any]):
        self.selector = selector

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.selector == self.selector

    def __hash__(self) -> int:
        return hash((type(self), self.selector))

    def __call__(self, matvec: Any, params: Any, factor: Array, v: Array) -> Array:
        selector = self.selector
        expected = (jax.eval_shape(selector, _shapes(params)).shape[0], factor.shape[0])
        if jnp.shape(v) != expected:
            raise ValueError(f"The relative-flatness operator got a vector of shape {jnp.shape(v)}; "
                             f"expected {expected}, the shape of its `like`.")
        (tangent,) = jax.linear_transpose(selector, _shapes(params))(
            jnp.matmul(v, factor, precision=_HIGHEST))
        return jnp.matmul(selector(matvec(tangent)), factor.T, precision=_HIGHEST)


def relative_flatness_operator(matvec: Matvec, params: Any, layer: Any) -> Operator:
    r"""The operator whose trace is the relative flatness of the kernel ``W`` that ``layer`` selects.

    Convention: ``W`` has Flax's Dense layout ``(inputs, neurons)``, so neuron :math:`s`'s weights are
    the column :math:`w_s = W_{:,s}`. Petzka et al.'s relative flatness is

    .. math::
        \kappa(W) = \sum_{s, s'} \langle w_s, w_{s'} \rangle \operatorname{tr}(H_{s,s'})
        = \sum_{s,s',i} G_{s s'} H_{(i,s),(i,s')}, \qquad G = W^\top W,

    with :math:`H_{s,s'}` the block of the Hessian between neurons :math:`s` and :math:`s'`. For any
    :math:`C` with :math:`C^\top C = G`, the map :math:`J: V \mapsto VC` has :math:`J J^\top: Y
    \mapsto YG`, so :math:`\kappa = \operatorname{tr}(H (J J^\top)) = \operatorname{tr}(J^\top H J)`:
    the trace of the symmetric operator :math:`V \mapsto [H(VC)]\,C^\top`, which Hutchinson (or
    Hutch++, XTrace) estimates without bias, one Hessian product per probe. With :math:`C = W`
    (``inputs <= neurons``) it is the Hessian at :math:`U = 0` of

    .. math::
        U \mapsto L(\theta \text{ with } W \leftarrow (I + U) W),

    a perturbation of the layer's *inputs* by the matrix :math:`U`. A rescaling of the neurons
    :math:`W \to W D` compensated downstream (:math:`D` diagonal positive, the next layer's rows times
    :math:`D^{-1}`; or a LayerNorm after the layer) leaves this function of :math:`U` unchanged, so
    the operator itself is unchanged. With more inputs than neurons :math:`C` is the ``R`` of
    :math:`W = QR` (``neurons x neurons``, smaller), and :math:`R(WD) = R(W)D` keeps the same
    property. Vectors have shape ``(inputs, min(inputs, neurons))``.

    Args:
        matvec: ``v -> A v`` on pytrees like ``params`` (``hvp_fn``, ``dataset_hvp_fn``, ``ggn_fn``).
        params: the parameters the kernel is selected from.
        layer: which kernel: a path of keys (``'params/Dense_0/kernel'`` or
            ``('params', 'Dense_0', 'kernel')``, or a ``jax.tree_util`` key path), or a function
            ``params -> W`` that selects entries (``lambda p: p["w"].T`` for a ``(neurons, inputs)``
            weight; ``lambda p: p["conv"].reshape(-1, p["conv"].shape[-1])`` for a convolution).
            A path is hashable, so operators of later checkpoints reuse compiled estimators; a
            function is compared by identity.

    Returns:
        An :class:`Operator` ``(matvec, like)``: pass both to :func:`trace`, ``top_eigenvalues``,
        ``spectral_density``.

    Raises:
        ValueError, TypeError: naming ``layer`` when it does not select a 2-D floating array of
            distinct entries of ``params``.

    Example:
        >>> import jax, jax.numpy as jnp, hessjax
        >>> params = {"w": jnp.array([[1.0, 2.0]]), "v": jnp.array([1.0, 1.0])}
        >>> loss = lambda p, x: 0.5 * jnp.sum((x @ p["w"]) ** 2 * p["v"])
        >>> op = hessjax.relative_flatness_operator(hessjax.hvp_fn(loss, params, jnp.ones((1, 1))),
        ...                                         params, "w")
        >>> op.like.shape, round(float(hessjax.trace(*op, jax.random.key(0), num_matvecs=2).value), 4)
        ((1, 1), 5.0)

    References:
        Petzka, Kamp, Adilova, Sminchisescu & Boley, "Relative flatness and generalization",
        NeurIPS 2021.
    """
    _checks.check_float_tree(params, "params")
    selector = _selector(layer)
    kernel = _select(selector, params)
    factor = _gram_factor(kernel)
    like = jnp.zeros((kernel.shape[0], factor.shape[0]), kernel.dtype)
    return Operator(jax.tree_util.Partial(_FeatureProduct(selector), as_pytree_fn(matvec), params,
                                          factor), like)


def relative_flatness(loss_fn: LossFn, params: Any, batch: Any, key: Array, *, layer: Any,
                      num_matvecs: int, method: str = "hutchinson", probe: str = "rademacher",
                      chunk_size: int | None = None) -> TraceEstimate:
    r"""Estimates the relative flatness :math:`\kappa(W)` of one layer's kernel, with an error bar.

    :math:`\kappa(W) = \sum_{s,s'} \langle w_s, w_{s'}\rangle \operatorname{tr}(H_{s,s'})`, neuron
    :math:`s`'s weights :math:`w_s` being column :math:`s` of ``W`` (Flax's ``(inputs, neurons)``
    layout), estimated as the trace of :func:`relative_flatness_operator`. Unchanged when the layer's
    neurons are rescaled and the next layer (or a normalization) compensates. Petzka et al. bound the
    generalization gap of the feature layer by it, for the feature layer feeding the output.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``, pure.
        params: a pytree of floating arrays at which the Hessian is taken.
        batch: any pytree, passed to ``loss_fn``.
        key: a ``jax.random`` key.
        layer: which kernel, a path or a function ``params -> W`` (see
            :func:`relative_flatness_operator`).
        num_matvecs: the budget of Hessian-vector products (see :func:`trace`).
        method: ``"hutchinson"``, ``"hutch++"`` or ``"xtrace"``.
        probe: ``"rademacher"`` or ``"gaussian"``.
        chunk_size: products per compiled kernel.

    Returns:
        A :class:`TraceEstimate` of :math:`\kappa(W)`.

    Example:
        >>> import jax, jax.numpy as jnp, hessjax
        >>> loss = lambda p, x: jnp.mean((jax.nn.relu(x @ p["w1"]) @ p["w2"]) ** 2)
        >>> params = {"w1": jnp.array([[1.0, -1.0]]), "w2": jnp.array([[2.0], [1.0]])}
        >>> x = jnp.array([[1.0], [-2.0]])
        >>> a = hessjax.relative_flatness(loss, params, x, jax.random.key(0), layer="w1", num_matvecs=2)
        >>> rescaled = {"w1": params["w1"] * jnp.array([4.0, 0.5]),  # same function
        ...             "w2": params["w2"] / jnp.array([[4.0], [0.5]])}
        >>> b = hessjax.relative_flatness(loss, rescaled, x, jax.random.key(0), layer="w1", num_matvecs=2)
        >>> round(float(a.value), 4), round(float(b.value), 4)
        (8.0, 8.0)

    References:
        Petzka, Kamp, Adilova, Sminchisescu & Boley, "Relative flatness and generalization",
        NeurIPS 2021.
    """
    operator_ = relative_flatness_operator(hvp_fn(loss_fn, params, batch), params, layer)
    return trace(operator_.matvec, operator_.like, key, num_matvecs=num_matvecs, method=method,
                 probe=probe, chunk_size=chunk_size)


def effective_rank(spectrum: SpectralDensity | Array) -> Array:
    r"""The entropy effective rank :math:`\exp(-\sum_i p_i \log p_i)`, :math:`p_i \propto |\lambda_i|`.

    Roy & Vetterli's effective rank of a matrix with singular values :math:`|\lambda_i|`: ``r`` for a
    matrix with ``r`` equal nonzero eigenvalues and zeros elsewhere, between 1 and the rank otherwise,
    and unchanged when the matrix is scaled. Zero eigenvalues do not count, so a density's (large)
    mass at zero does not change it.

    From a :class:`SpectralDensity`, each node :math:`\theta_j` stands for :math:`n w_j` eigenvalues
    (its weight times the dimension), and both sums are quadratures:
    :math:`S = n\sum_j w_j |\theta_j|` and :math:`\log S - \frac{n}{S}\sum_j w_j |\theta_j|
    \log|\theta_j|`. The estimate is only as good as that quadrature: Gauss quadrature with ``m``
    Lanczos steps is exact for polynomials of degree below ``2m``, and :math:`|\lambda|` and
    :math:`|\lambda| \log|\lambda|` are not polynomials (a kink at 0, where an indefinite Hessian has
    its bulk), so small eigenvalues need many steps; and the probes carry Hutchinson-type noise,
    through a ratio and a logarithm, so few probes bias it. From all ``n`` eigenvalues it is exact;
    from the top ``k`` (``Eigen.values``) it is the effective rank of that part of the spectrum only.

    The Hessian's effective rank is not invariant under rescalings that leave the function unchanged;
    that of :func:`adaptive_operator`'s spectrum is.

    Args:
        spectrum: a :class:`SpectralDensity`, or an array of eigenvalues (any shape; flattened).

    Returns:
        The effective rank, a scalar array (NaN under ``jit`` for an all-zero spectrum).

    Raises:
        TypeError: ``spectrum`` is neither a density nor a floating array.
        ValueError: (outside ``jit``) the spectrum is empty or all zero.

    Example:
        >>> import jax.numpy as jnp, hessjax
        >>> round(float(hessjax.effective_rank(jnp.array([2.0, 2.0, -2.0, 0.0, 0.0]))), 4)
        3.0
        >>> a = jnp.diag(jnp.array([1.0, 1.0, 0.0, 0.0]))
        >>> density = hessjax.spectral_density(lambda v: a @ v, jnp.zeros(4), jax.random.key(0),
        ...                                    num_probes=2, num_steps=4)
        >>> round(float(hessjax.effective_rank(density)), 4)
        2.0

    References:
        Roy & Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO 2007.
    """
    if isinstance(spectrum, SpectralDensity):
        values = jnp.abs(jnp.ravel(spectrum.nodes))
        counts = jnp.ravel(spectrum.weights) * spectrum.dimension
    else:
        dtype = getattr(spectrum, "dtype", None)
        if not isinstance(spectrum, (jax.Array, np.ndarray)) or not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError("`spectrum` must be a SpectralDensity or a floating-point array of "
                            f"eigenvalues; got {type(spectrum).__name__} of dtype {dtype}.")
        values = jnp.abs(jnp.ravel(spectrum))
        counts = jnp.ones_like(values)
    if values.size == 0:
        raise ValueError("`spectrum` is empty; expected at least one eigenvalue.")
    total = jnp.sum(counts * values)
    if not _checks.is_tracing(total) and not bool(total > 0):
        raise ValueError("`spectrum` is all zero: its effective rank is undefined.")
    return _entropy_effective_rank(values, counts, total)


@jax.jit
def _entropy_effective_rank(values: Array, counts: Array, total: Array) -> Array:
    shares = values / total
    # 0 log 0 = 0: zero eigenvalues carry no share (the inner `where` keeps the gradient finite).
    share_logs = jnp.where(shares > 0, shares * jnp.log(jnp.where(shares > 0, shares, 1)), 0)
    return jnp.exp(-jnp.sum(counts * share_logs))
