"""Benchmark workloads, defined once and run in JAX and in PyTorch on identical weights.

Each architecture is one function ``forward(ops, params, inputs) -> logits`` written against a small
set of array operations (:class:`JaxOps`, :class:`TorchOps`), so the JAX model and the PyTorch model
are the same code and cannot drift apart. Weights are drawn once in numpy from a fixed seed and
copied into both frameworks; :func:`check_agreement` compares loss, gradient and one Hessian-vector
product between the two before anything is timed.

Conventions: images are NHWC and convolution kernels HWIO in the canonical (numpy and JAX) layout;
the PyTorch side keeps its native NCHW/OIHW layout and converts at the boundary, so neither
framework pays for transposes inside the timed code. Every 4-D parameter is a convolution kernel.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import pathlib
import pickle
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = dict[str, Any]
Forward = Callable[[Any, Params, Any], Any]

LAYER_NORM_EPSILON = 1e-5
BATCH_NORM_EPSILON = 1e-5


class JaxOps:
    """The array operations the architectures use, in JAX (NHWC images, HWIO kernels)."""

    einsum = staticmethod(jnp.einsum)
    tanh = staticmethod(jnp.tanh)
    relu = staticmethod(jax.nn.relu)

    @staticmethod
    def gelu(x):
        return jax.nn.gelu(x, approximate=True)

    @staticmethod
    def dense(x, layer):
        return x @ layer["kernel"] + layer["bias"]

    @staticmethod
    def conv(x, layer, stride=1, padding=1):
        y = jax.lax.conv_general_dilated(
            x, layer["kernel"], (stride, stride), ((padding, padding), (padding, padding)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y if layer.get("bias") is None else y + layer["bias"]

    @staticmethod
    def batch_norm(x, layer):
        mean = x.mean(axis=(0, 1, 2))
        var = x.var(axis=(0, 1, 2))
        return (x - mean) * jax.lax.rsqrt(var + BATCH_NORM_EPSILON) * layer["scale"] + layer["bias"]

    @staticmethod
    def layer_norm(x, layer):
        mean = x.mean(axis=-1, keepdims=True)
        var = x.var(axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPSILON) * layer["scale"] + layer["bias"]

    @staticmethod
    def flatten_image(x):
        return x.reshape(x.shape[0], -1)

    @staticmethod
    def global_mean_pool(x):
        return x.mean(axis=(1, 2))

    @staticmethod
    def causal_softmax(scores):
        length = scores.shape[-1]
        mask = jnp.tril(jnp.ones((length, length), dtype=bool))
        return jax.nn.softmax(jnp.where(mask, scores, -1e9), axis=-1)

    @staticmethod
    def embed(table, ids):
        return table[ids]



class TorchOps:
    """The same operations in PyTorch (NCHW images, OIHW kernels); imports torch on construction."""

    def __init__(self):
        import torch
        import torch.nn.functional as F

        self.torch, self.F = torch, F
        self.einsum, self.tanh, self.relu = torch.einsum, torch.tanh, torch.relu

    def gelu(self, x):
        return self.F.gelu(x, approximate="tanh")

    @staticmethod
    def dense(x, layer):
        return x @ layer["kernel"] + layer["bias"]

    def conv(self, x, layer, stride=1, padding=1):
        return self.F.conv2d(x, layer["kernel"], layer.get("bias"), stride=stride, padding=padding)

    def batch_norm(self, x, layer):
        return self.F.batch_norm(x, None, None, layer["scale"], layer["bias"], training=True,
                                 eps=BATCH_NORM_EPSILON)

    def layer_norm(self, x, layer):
        return self.F.layer_norm(x, x.shape[-1:], layer["scale"], layer["bias"],
                                 eps=LAYER_NORM_EPSILON)

    @staticmethod
    def flatten_image(x):
        # Flatten in NHWC order so that the dense layer after it sees the canonical feature order.
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)

    @staticmethod
    def global_mean_pool(x):
        return x.mean(dim=(2, 3))

    def causal_softmax(self, scores):
        # Written out rather than fused attention: PyTorch's fused kernels have no double backward.
        length = scores.shape[-1]
        mask = self.torch.ones(length, length, dtype=self.torch.bool, device=scores.device).tril()
        return self.torch.softmax(scores.masked_fill(~mask, -1e9), dim=-1)

    @staticmethod
    def embed(table, ids):
        return table[ids]



# ----------------------------------------------------------------------------- architectures


def _dense_init(rng, fan_in, fan_out, std=None):
    std = 1.0 / math.sqrt(fan_in) if std is None else std
    return {"kernel": (rng.standard_normal((fan_in, fan_out)) * std).astype(np.float32),
            "bias": (rng.standard_normal(fan_out) * 0.01).astype(np.float32)}


def _conv_init(rng, size, channels_in, channels_out, bias=True):
    std = 1.0 / math.sqrt(size * size * channels_in)
    layer = {"kernel": (rng.standard_normal((size, size, channels_in, channels_out)) * std)
             .astype(np.float32)}
    if bias:
        layer["bias"] = (rng.standard_normal(channels_out) * 0.01).astype(np.float32)
    return layer


def _norm_init(features):
    return {"scale": np.ones(features, np.float32), "bias": np.zeros(features, np.float32)}


def init_mlp(rng: np.random.Generator, sizes: tuple[int, ...]) -> Params:
    """Weights of a tanh MLP with layer widths ``sizes`` (input first, classes last)."""
    return {f"dense{i}": _dense_init(rng, a, b)
            for i, (a, b) in enumerate(itertools.pairwise(sizes))}


def mlp(ops, params: Params, x):
    """A tanh MLP on flat inputs: dense layers with tanh between them."""
    num_layers = len(params)
    for i in range(num_layers):
        x = ops.dense(x, params[f"dense{i}"])
        if i < num_layers - 1:
            x = ops.tanh(x)
    return x


def init_cnn(rng: np.random.Generator, channels: tuple[int, ...], image_size: int,
             image_channels: int, num_classes: int) -> Params:
    """Weights of :func:`cnn`: 3x3 convolutions with ``channels`` outputs, then one dense layer."""
    params = {f"conv{i}": _conv_init(rng, 3, a, b)
              for i, (a, b) in enumerate(itertools.pairwise((image_channels, *channels)))}
    params["head"] = _dense_init(rng, image_size * image_size * channels[-1], num_classes)
    return params


def cnn(ops, params: Params, x):
    """Same-size 3x3 convolutions with ReLU, flattened into a dense classifier."""
    for i in range(len(params) - 1):
        x = ops.relu(ops.conv(x, params[f"conv{i}"]))
    return ops.dense(ops.flatten_image(x), params["head"])


RESNET18_STAGES = (2, 2, 2, 2)


def init_resnet18(rng: np.random.Generator, width: int = 64, num_classes: int = 10,
                  image_channels: int = 3) -> Params:
    """Weights of :func:`resnet18` (CIFAR variant: 3x3 stem, no max-pool; 11.2M at width 64)."""
    params = {"stem": _conv_init(rng, 3, image_channels, width, bias=False),
              "stem_norm": _norm_init(width)}
    channels_in = width
    for stage, num_blocks in enumerate(RESNET18_STAGES):
        channels = width * 2**stage
        for block in range(num_blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            layer = {"conv1": _conv_init(rng, 3, channels_in, channels, bias=False),
                     "norm1": _norm_init(channels),
                     "conv2": _conv_init(rng, 3, channels, channels, bias=False),
                     "norm2": _norm_init(channels)}
            if stride != 1 or channels_in != channels:
                layer["shortcut"] = _conv_init(rng, 1, channels_in, channels, bias=False)
                layer["shortcut_norm"] = _norm_init(channels)
            params[f"stage{stage}_block{block}"] = layer
            channels_in = channels
    params["head"] = _dense_init(rng, channels_in, num_classes)
    return params


def resnet18(ops, params: Params, x):
    """ResNet-18 with batch-statistics normalization (training mode, no running averages)."""
    x = ops.relu(ops.batch_norm(ops.conv(x, params["stem"]), params["stem_norm"]))
    for stage, num_blocks in enumerate(RESNET18_STAGES):
        for block in range(num_blocks):
            layer = params[f"stage{stage}_block{block}"]
            stride = 2 if stage > 0 and block == 0 else 1
            y = ops.relu(ops.batch_norm(ops.conv(x, layer["conv1"], stride), layer["norm1"]))
            y = ops.batch_norm(ops.conv(y, layer["conv2"]), layer["norm2"])
            if "shortcut" in layer:
                x = ops.batch_norm(ops.conv(x, layer["shortcut"], stride, padding=0),
                                   layer["shortcut_norm"])
            x = ops.relu(x + y)
    return ops.dense(ops.global_mean_pool(x), params["head"])


@dataclasses.dataclass(frozen=True)
class TransformerShape:
    """Sizes of a GPT-2-style decoder. The defaults are GPT-2 small (124M parameters)."""

    vocab_size: int = 50257
    max_length: int = 1024
    width: int = 768
    depth: int = 12
    num_heads: int = 12


def init_transformer(rng: np.random.Generator, shape: TransformerShape) -> Params:
    """Weights of :func:`transformer`, GPT-2's initialization (normal, std 0.02)."""
    d = shape.width

    def dense(fan_in, fan_out):
        return _dense_init(rng, fan_in, fan_out, std=0.02)

    params = {"token_embedding": (rng.standard_normal((shape.vocab_size, d)) * 0.02)
              .astype(np.float32),
              "position_embedding": (rng.standard_normal((shape.max_length, d)) * 0.01)
              .astype(np.float32),
              "final_norm": _norm_init(d)}
    for i in range(shape.depth):
        params[f"block{i}"] = {"norm1": _norm_init(d), "qkv": dense(d, 3 * d),
                               "attention_out": dense(d, d), "norm2": _norm_init(d),
                               "mlp_in": dense(d, 4 * d), "mlp_out": dense(4 * d, d)}
    return params


def transformer(ops, params: Params, tokens, num_heads: int):
    """A pre-LayerNorm causal decoder with a tied output embedding (GPT-2's layout)."""
    batch, length = tokens.shape
    x = ops.embed(params["token_embedding"], tokens) + params["position_embedding"][:length]
    width = x.shape[-1]
    head_dim = width // num_heads
    blocks = sorted((k for k in params if k.startswith("block")), key=lambda k: int(k[5:]))
    for name in blocks:
        layer = params[name]
        qkv = ops.dense(ops.layer_norm(x, layer["norm1"]), layer["qkv"])
        q, k, v = (qkv[..., i * width:(i + 1) * width].reshape(batch, length, num_heads, head_dim)
                   for i in range(3))
        weights = ops.causal_softmax(ops.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim))
        attended = ops.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, width)
        x = x + ops.dense(attended, layer["attention_out"])
        hidden = ops.gelu(ops.dense(ops.layer_norm(x, layer["norm2"]), layer["mlp_in"]))
        x = x + ops.dense(hidden, layer["mlp_out"])
    return ops.layer_norm(x, params["final_norm"]) @ params["token_embedding"].T


# ----------------------------------------------------------------------------- workloads


@dataclasses.dataclass(frozen=True)
class Workload:
    """A model, its weights and one batch, usable from JAX and from PyTorch.

    Attributes:
        name: a short label for tables.
        forward: ``forward(ops, params, inputs) -> logits``.
        params: canonical numpy weights (nested dicts of float32 arrays).
        inputs: canonical numpy inputs (NHWC images, flat features or token ids).
        labels: integer class labels (per example, or per token for language models).
    """

    name: str
    forward: Forward
    params: Params
    inputs: np.ndarray
    labels: np.ndarray

    @property
    def num_params(self) -> int:
        return sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(self.params))

    # JAX side.
    def jax_loss(self) -> Callable[[Params, tuple[jax.Array, jax.Array]], jax.Array]:
        """``loss_fn(params, (inputs, labels))``: mean cross-entropy, as hessjax expects."""
        forward = self.forward

        def loss_fn(params, batch):
            inputs, labels = batch
            logits = forward(JaxOps, params, inputs)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        return loss_fn

    def jax_params(self, dtype=jnp.float32) -> Params:
        return jax.tree_util.tree_map(lambda p: jnp.asarray(p, dtype), self.params)

    def jax_batch(self, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
        inputs = self.inputs if self.inputs.dtype.kind == "i" else self.inputs.astype(dtype)
        return jnp.asarray(inputs), jnp.asarray(self.labels)

    # PyTorch side.
    def torch_model(self, device: str = "cpu"):
        """A ``torch.nn.Module`` mapping inputs to logits, holding copies of the weights."""
        return _torch_module(self.forward, self.params, device)

    def torch_batch(self, device: str = "cpu"):
        import torch

        inputs = torch.from_numpy(np.ascontiguousarray(
            self.inputs.transpose(0, 3, 1, 2) if self.inputs.ndim == 4 else self.inputs))
        return inputs.to(device), torch.from_numpy(self.labels.astype(np.int64)).to(device)

    def torch_criterion(self):
        """The same mean cross-entropy as a ``torch.nn.CrossEntropyLoss`` (curvlinops reads its
        ``reduction``), over all leading axes of the logits."""
        import torch

        class CrossEntropy(torch.nn.CrossEntropyLoss):
            def forward(self, logits, labels):
                return super().forward(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))

        return CrossEntropy()


def _to_torch_layout(array: np.ndarray) -> np.ndarray:
    return array.transpose(3, 2, 0, 1) if array.ndim == 4 else array


def from_torch_layout(array: np.ndarray) -> np.ndarray:
    """Converts a PyTorch-layout parameter-shaped array (OIHW kernels) to the canonical layout."""
    return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array


def flat_names(params: Params) -> list[str]:
    """Parameter names ``"layer/leaf"`` in the order of ``jax.tree_util.tree_leaves(params)``."""
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    return ["/".join(str(key.key) for key in path) for path, _ in paths]


def _torch_module(forward: Forward, params: Params, device: str):
    import torch

    ops = TorchOps()
    names = flat_names(params)
    leaves = jax.tree_util.tree_leaves(params)
    treedef = jax.tree_util.tree_structure(params)

    class Model(torch.nn.Module):
        """Holds the weights in PyTorch layout, in ``tree_leaves`` order, and runs ``forward``."""

        def __init__(self):
            super().__init__()
            self.weights = torch.nn.ParameterList(
                torch.nn.Parameter(torch.tensor(_to_torch_layout(np.asarray(p))))
                for p in leaves)
            self.names = names

        def forward(self, inputs):
            return forward(ops, jax.tree_util.tree_unflatten(treedef, list(self.weights)), inputs)

    return Model().to(device)


def digits(batch_size: int = 1024, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``batch_size`` standardized sklearn digits (features of shape (n, 64)) and labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))[:batch_size]
    x = data.data[order].astype(np.float32)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    return x.astype(np.float32), data.target[order].astype(np.int32)


def digits_mlp(sizes: tuple[int, ...] = (64, 256, 256, 10), batch_size: int = 1024,
               seed: int = 0) -> Workload:
    """A tanh MLP on standardized digits (64-256-256-10: 85k parameters)."""
    x, y = digits(batch_size, seed)
    return Workload(f"MLP {'-'.join(map(str, sizes))}", mlp,
                    init_mlp(np.random.default_rng(seed), sizes), x, y)


def digits_cnn(channels: tuple[int, ...] = (8, 16), batch_size: int = 1024,
               seed: int = 0) -> Workload:
    """A small CNN on digits as 8x8x1 images (channels 8/16: 11.5k parameters; 32/64: 60k)."""
    x, y = digits(batch_size, seed)
    return Workload(f"CNN {'/'.join(map(str, channels))}", cnn,
                    init_cnn(np.random.default_rng(seed), channels, 8, 1, 10),
                    x.reshape(-1, 8, 8, 1), y)


def synthetic_resnet18(batch_size: int = 128, image_size: int = 32, width: int = 64,
                       seed: int = 0) -> Workload:
    """ResNet-18 on a synthetic batch of ``image_size``² RGB images with 10 classes."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, image_size, image_size, 3)).astype(np.float32)
    y = rng.integers(0, 10, batch_size).astype(np.int32)
    return Workload(f"ResNet-18 (width {width})", resnet18, init_resnet18(rng, width), x, y)


def synthetic_transformer(batch_size: int = 8, length: int = 256,
                          shape: TransformerShape = TransformerShape(), seed: int = 0) -> Workload:
    """A GPT-2-style decoder on a synthetic batch of random tokens (next-token labels)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, shape.vocab_size, (batch_size, length + 1)).astype(np.int32)
    forward = _TransformerForward(shape.num_heads)
    return Workload(f"GPT-2-style d{shape.width} L{shape.depth}", forward,
                    init_transformer(rng, shape), tokens[:, :-1], tokens[:, 1:])


@dataclasses.dataclass(frozen=True)
class _TransformerForward:
    """:func:`transformer` with its head count bound (a hashable, comparable callable)."""

    num_heads: int

    def __call__(self, ops, params, tokens):
        return transformer(ops, params, tokens, self.num_heads)


# ----------------------------------------------------------------------------- agreement


def torch_loss_grad_hvp(workload: Workload, v: Params, device: str = "cpu"):
    """Loss, gradient and ``H v`` in PyTorch (double backward), as canonical numpy arrays."""
    import torch

    model = workload.torch_model(device)
    inputs, labels = workload.torch_batch(device)
    params = list(model.parameters())
    loss = workload.torch_criterion()(model(inputs), labels)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    tangent = [torch.from_numpy(np.ascontiguousarray(_to_torch_layout(np.asarray(t)))).to(device)
               for t in jax.tree_util.tree_leaves(v)]
    directional = sum((g * t).sum() for g, t in zip(grads, tangent, strict=True))
    hv = torch.autograd.grad(directional, params)

    def canonical(tensors):
        leaves = [from_torch_layout(t.detach().cpu().numpy()) for t in tensors]
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(workload.params), leaves)

    return float(loss.detach()), canonical(grads), canonical(hv)


def jax_loss_grad_hvp(workload: Workload, v: Params, hvp: Callable | None = None):
    """Loss, gradient and ``H v`` in JAX; ``hvp(loss_fn, params, batch, v)``, default jvp(grad)."""
    loss_fn = workload.jax_loss()
    params, batch = workload.jax_params(), workload.jax_batch()
    if hvp is None:
        @functools.partial(jax.jit, static_argnums=0)
        def hvp(f, p, b, t):
            return jax.jvp(lambda q: jax.grad(f)(q, b), (p,), (t,))[1]

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, batch)
    hv = hvp(loss_fn, params, batch, jax.tree_util.tree_map(jnp.asarray, v))
    return float(loss), jax.tree_util.tree_map(np.asarray, grads), jax.tree_util.tree_map(
        np.asarray, hv)


def relative_error(a: Params, b: Params) -> float:
    """``‖a − b‖ / ‖b‖`` over all leaves."""
    leaves = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    pairs = [(np.asarray(x, np.float64), np.asarray(y, np.float64)) for x, y in leaves]
    diff = sum(float(np.sum((x - y) ** 2)) for x, y in pairs)
    norm = sum(float(np.sum(y**2)) for _, y in pairs)
    return math.sqrt(diff / norm)


def random_direction(params: Params, seed: int = 1) -> Params:
    """A standard normal numpy vector shaped like ``params`` (float32)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)


def check_agreement(workload: Workload, hvp: Callable | None = None, rtol: float = 1e-4,
                    use_torch: bool = True, device: str = "cpu") -> dict[str, float]:
    """Checks that JAX and PyTorch compute the same loss, gradient and ``H v``; raises otherwise.

    Without PyTorch (``use_torch=False``) it checks against JAX itself in float64, with the ``H v``
    from reverse-over-reverse differentiation.

    Args:
        workload: the workload to check.
        hvp: the JAX Hessian-vector product under test, ``hvp(loss_fn, params, batch, v)``.
        rtol: the largest relative error accepted for each quantity.
        use_torch: compare against PyTorch (else against float64 JAX).
        device: the PyTorch device.

    Returns:
        The relative errors, keyed ``loss``, ``gradient`` and ``hvp``.

    Raises:
        AssertionError: naming the quantity that disagrees and by how much.
    """
    v = random_direction(workload.params)
    loss, grads, hv = jax_loss_grad_hvp(workload, v, hvp)
    if use_torch:
        ref_loss, ref_grads, ref_hv = torch_loss_grad_hvp(workload, v, device)
    else:
        ref_loss, ref_grads, ref_hv = _float64_reference(workload, v)
    errors = {"loss": abs(loss - ref_loss) / abs(ref_loss),
              "gradient": relative_error(grads, ref_grads),
              "hvp": relative_error(hv, ref_hv)}
    bad = {k: e for k, e in errors.items() if not e <= rtol}
    if bad:
        raise AssertionError(f"{workload.name}: JAX and the reference disagree beyond rtol={rtol}: "
                             f"{bad} (all relative errors: {errors})")
    return errors


def _float64_reference(workload: Workload, v: Params):
    # Reverse-over-reverse in float64: an independent differentiation path, exact at ReLU kinks
    # (where finite differences of the gradient are not).
    with jax.enable_x64(True):
        loss_fn = workload.jax_loss()
        params = workload.jax_params(jnp.float64)
        batch = workload.jax_batch(jnp.float64)
        tangent = jax.tree_util.tree_map(lambda t: jnp.asarray(t, jnp.float64), v)
        loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, batch)
        directional = lambda p, b, t: optax.tree_utils.tree_vdot(jax.grad(loss_fn)(p, b), t)
        hv = jax.jit(jax.grad(directional))(params, batch, tangent)
        return float(loss), jax.tree_util.tree_map(np.asarray, grads), jax.tree_util.tree_map(
            np.asarray, hv)


# ----------------------------------------------------------------------------- JAX-only problems


@dataclasses.dataclass(frozen=True)
class Problem:
    """A loss at one point, in the form hessjax's estimators take it (JAX only).

    Attributes:
        name: a short label for tables.
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        params: the point (a pytree of JAX arrays).
        batch: the batch ``loss_fn`` takes.
        logits_fn: ``logits_fn(params, inputs) -> logits`` (for ``hessjax.fisher_trace``).
        inputs: the inputs ``logits_fn`` takes.
    """

    name: str
    loss_fn: Callable[[Any, Any], jax.Array]
    params: Any
    batch: Any
    logits_fn: Callable[[Any, Any], Any]
    inputs: Any

    @property
    def num_params(self) -> int:
        return sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(self.params))


def problem(workload: Workload) -> Problem:
    """The JAX side of a :class:`Workload` as a :class:`Problem`."""
    batch = workload.jax_batch()
    return Problem(workload.name, workload.jax_loss(), workload.jax_params(), batch,
                   functools.partial(workload.forward, JaxOps), batch[0])


# The language setting's default model (experiments/configs/pcfg.py) on one pretraining batch, and
# a tiny variant on the `tiny` data for smoke runs.
MASKED_LM = {"pcfg_config": "small", "width": 32, "depth": 2, "batch_size": 256}
TINY_MASKED_LM = {"pcfg_config": "tiny", "width": 8, "depth": 1, "batch_size": 16}


def _masked_lm_config(options: dict[str, Any], data_dir: str | None = None):
    from experiments.configs import pcfg

    config = pcfg.get_config()
    config.data.pcfg_config = options["pcfg_config"]
    config.data.data_dir = data_dir
    config.model.width, config.model.depth = options["width"], options["depth"]
    config.pretrain.batch_size = options["batch_size"]
    return config


def _masked_lm_problem(options: dict[str, Any], model, loss_fn, params, batch) -> Problem:
    from experiments.training import evaluation

    batch = jax.tree_util.tree_map(jnp.asarray, batch)
    name = (f"masked-LM transformer w{options['width']} d{options['depth']} "
            f"({options['pcfg_config']} PCFG, batch {options['batch_size']})")
    return Problem(name, loss_fn, jax.tree_util.tree_map(jnp.asarray, params), batch,
                   evaluation.eval_logits(model, {}), batch["inputs"])


def masked_lm(options: dict[str, Any] = MASKED_LM, data_dir: str | None = None,
              save: pathlib.Path | None = None) -> Problem:
    """The language setting's masked-LM transformer at its initialization, on one training batch.

    Built the way the study builds it: ``experiments.training.runs.build_run`` on
    ``experiments/configs/pcfg.py`` (with ``options``' grammar and model size), ``run.eval_loss({})``
    and the batch of training step 0 (``objectives.training_batch``). Loading the 100,000 sentences
    of the ``small`` grammar takes 20-30 s on the 2-core CPU, so ``save`` writes what
    :func:`load_masked_lm` needs to rebuild the same problem without the data (for fresh processes).
    """
    import tensorflow_datasets as tfds

    from experiments.training import objectives, runs

    tfds.disable_progress_bar()
    run = runs.build_run(_masked_lm_config(options, data_dir))
    params, _ = run.init()
    batch = objectives.training_batch(run.objective, run.task.train, run.settings["batch_size"],
                                      run.seed, 0)
    loss_fn = run.eval_loss({})
    if save is not None:
        sizes = (run.task.num_classes, tuple(run.task.input_shape), run.task.input_vocab_size)
        with save.open("wb") as stream:
            pickle.dump({"options": dict(options), "sizes": sizes,
                         "params": jax.tree_util.tree_map(np.asarray, params), "batch": batch,
                         "loss": float(loss_fn(params, batch))}, stream)
    return _masked_lm_problem(options, run.model, loss_fn, params, batch)


def load_masked_lm(path: pathlib.Path) -> Problem:
    """The problem :func:`masked_lm` saved: the same model and loss, built without the data.

    The model comes from ``objectives.build_model_for`` and the loss from
    ``objectives.make_eval_loss`` (what ``build_run`` and ``Run.eval_loss`` call) with the task's
    sizes saved; the loss at the saved point is checked against the saved value.
    """
    from experiments.training import objectives, setting

    with path.open("rb") as stream:
        saved = pickle.load(stream)
    options = saved["options"]
    config = _masked_lm_config(options)
    objective = objectives.get_objective(config.pretrain, setting.of_config(config).objectives)
    num_classes, input_shape, vocab_size = saved["sizes"]
    model = objectives.build_model_for(objective, config.model, num_classes, input_shape,
                                       input_vocab_size=vocab_size)
    result = _masked_lm_problem(options, model, objectives.make_eval_loss(model, objective, {}),
                                saved["params"], saved["batch"])
    loss = float(result.loss_fn(result.params, result.batch))
    if not math.isclose(loss, saved["loss"], rel_tol=1e-5):
        raise AssertionError(f"The rebuilt masked-LM loss is {loss}; it was {saved['loss']}.")
    return result
