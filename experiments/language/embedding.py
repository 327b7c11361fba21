r"""A function-preserving embedding of a narrow `text_transformer` into a wider one.

Liu et al. (2023) compare model sizes at the same function: the small model is embedded into the
large architecture (their ``enlarge.py``) so that the large one computes exactly what the small one
does, and any difference in a statistic is the parametrisation's. :func:`enlarge` does this for
the `text_transformer` of `experiments.training.models`, width ``w`` into width ``W = k w``, by
duplicating hidden units: the residual stream of the wide model is ``k`` copies of the narrow
one's, :math:`x' = (x, x, \dots, x)`. Then

* every LayerNorm sees the same mean and variance (each copy contributes equally), so its output is
  the copies of the narrow output, with the scale and bias copied;
* every layer reading the stream (query, key, value, the MLP's first layer, the output head) gets
  its kernel copied along the input axis and divided by ``k``, so it reads the same pre-activation;
* every layer writing the stream (embeddings, the attention's output, the MLP's second layer) is
  copied along the output axis, so it writes the copies;
* the MLP's hidden layer may widen by any integer factor ``m`` (copies, read back divided by
  ``m``), and the attention by ``a`` times the heads and ``b`` times the head size with
  ``a b = k``: a wide head is a copy of a narrow one, its query scaled by :math:`1/\sqrt{b}` so that
  the logits :math:`q \cdot k / \sqrt{b d}` of the longer copied vectors are the narrow ones.

The two models must have the same depth, vocabulary, sentence length and output head.

References:
  H. Liu, S. M. Xie, Z. Li and T. Ma, "Same Pre-training Loss, Better Downstream: Implicit Bias
  Matters for Language Models", ICML 2023.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

# Axis roles whose sizes the two models must share.
_SHARED = ("vocab", "length", "classes", "one")


def _axes(path: tuple[str, ...]) -> tuple[tuple[str, bool], ...]:
    """The (role, read by a contraction) of each axis of the parameter at `path`."""
    name, parent = path[-1], path[-2] if len(path) > 1 else ""
    if name == "embedding":
        return (("vocab", False), ("width", False))
    if name == "position_embedding":
        return (("one", False), ("length", False), ("width", False))
    if path[:2] == ("head", "Dense_0"):
        return (("width", True), ("classes", False)) if name == "kernel" else (("classes", False),)
    if parent.startswith("LayerNorm"):
        return (("width", False),)
    if parent in ("query", "key", "value"):
        axes = (("width", True), ("heads", False), ("head_dim", False))
        return axes if name == "kernel" else axes[1:]
    if parent == "out":
        return (("heads", True), ("head_dim", True), ("width", False)) if name == "kernel" else (
            ("width", False),
        )
    if parent == "Dense_0":
        return (("width", True), ("hidden", False)) if name == "kernel" else (("hidden", False),)
    if parent == "Dense_1":
        return (("hidden", True), ("width", False)) if name == "kernel" else (("width", False),)
    raise ValueError(
        f"params: {'/'.join(path)} is not a parameter of a text_transformer with a linear head"
    )


def _path(key_path: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(getattr(key, "key", key)) for key in key_path)


def enlarge(params: Any, like: Any) -> Any:
    """Embeds a narrow `text_transformer`'s parameters into a wider architecture, same function.

    Args:
      params: the narrow model's parameters (`{"encoder": ..., "head": ...}`).
      like: the wide model's parameters, or their shapes (`jax.eval_shape(run.init)[0]`): the
        same tree, with every width-like axis an integer multiple of the narrow one's.

    Returns:
      Parameters shaped like `like` (float32 numpy arrays) whose model computes the narrow
      model's outputs (see the module docstring).

    Raises:
      ValueError: naming both shapes, where the trees differ (e.g. in depth), an axis that must be
        shared differs, a width-like axis is not an integer multiple of the narrow one, the width
        ratios disagree, or the heads' and head sizes' ratios do not multiply to the width's.
    """
    small = {_path(p): np.asarray(leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(params)}
    large = {_path(p): leaf.shape for p, leaf in jax.tree_util.tree_leaves_with_path(like)}
    if set(small) != set(large):
        only = sorted("/".join(p) for p in set(small) ^ set(large))
        raise ValueError(
            f"params, like: expected the same parameter tree (same depth and head), got "
            f"parameters only one of them has: {only[:6]}"
        )
    ratios: dict[str, tuple[int, str]] = {}
    for path, leaf in small.items():
        axes, wide = _axes(path), large[path]
        if len(axes) != leaf.ndim or len(wide) != leaf.ndim:
            raise ValueError(f"params, like: {'/'.join(path)} has shapes {leaf.shape} and {wide}")
        for (role, _), narrow_size, wide_size in zip(axes, leaf.shape, wide, strict=True):
            where = f"{'/'.join(path)} {leaf.shape} -> {tuple(wide)}"
            if wide_size % narrow_size:
                raise ValueError(
                    f"params, like: cannot embed {where}: the {role} axis {wide_size} is not a "
                    f"multiple of {narrow_size}"
                )
            ratio = wide_size // narrow_size
            if role in _SHARED and ratio != 1:
                raise ValueError(f"params, like: cannot embed {where}: the {role} axis differs")
            seen = ratios.setdefault(role, (ratio, where))
            if seen[0] != ratio:
                raise ValueError(
                    f"params, like: the {role} axes grow by different factors: {seen[1]} and "
                    f"{where}"
                )
    width, heads, head_dim = (ratios[role][0] for role in ("width", "heads", "head_dim"))
    if heads * head_dim != width:
        raise ValueError(
            f"params, like: the width grows {width}x ({ratios['width'][1]}) but the attention "
            f"{heads * head_dim}x ({ratios['heads'][1]}); expected heads x head size to grow as "
            "the width"
        )
    wide_params = {}
    for path, leaf in small.items():
        axes = _axes(path)
        reps = [large[path][axis] // leaf.shape[axis] for axis in range(leaf.ndim)]
        read = math.prod(rep for rep, (_, contracted) in zip(reps, axes, strict=True) if contracted)
        value = np.tile(leaf, reps) / read
        if path[-2] == "query":
            value = value / math.sqrt(head_dim)
        wide_params[path] = value.astype(np.float32)
    return jax.tree_util.tree_map_with_path(lambda p, _: wide_params[_path(p)], like)
