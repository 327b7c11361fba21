"""Flax Linen model families, each split into an encoder (features) and a replaceable head.

Every model is an `EncoderHead`: its params have exactly two top-level sub-trees, `encoder` and
`head`, so transfer keeps `params["encoder"]` and initializes a new head. Families (all sized by
`config.model.width` and `config.model.depth`):

  * `mlp`: `depth` dense layers of `width` units.
  * `cnn`: `depth` 3x3 conv layers with `width * 2**i` channels, each followed by 2x2 average
    pooling while the image is larger than 1x1, then global average pooling.
  * `resnet`: a 3x3 stem of `width` channels and `depth` basic residual blocks; every second block
    halves the resolution and doubles the channels. `norm="batch"` (BatchNorm) or `"none"`.
  * `vit`: patches of `patch_size` pixels embedded to `width`, `depth` pre-LayerNorm transformer
    blocks with `num_heads` heads, mean-pooled.
  * `text_transformer`: a BERT-style encoder of token sequences: token and learned position
    embeddings, `depth` pre-LayerNorm transformer blocks with `num_heads` heads and a final
    LayerNorm; its features are per token, `(batch, length, width)`, and the head is applied to
    every token (the masked-LM head over the vocabulary). Given `TokensAt(tokens, positions)`
    instead of the token ids, it returns the features of those positions only, `(batch, k,
    width)`: the same numbers, but the last block computes its attention queries, residual and
    MLP at the `k` positions alone (the masked-LM loss reads one position of each sentence, and
    this skips about 40% of a width-32, depth-2 model's work). Built with `input_vocab_size`, the
    number of token ids of the data.

Heads: `"linear"` (one dense layer) or `"mlp"` (a hidden layer of `head_hidden` units, default
`width`; the projection head of contrastive learning and the decoder of denoising). No model uses
dropout, so `train=False` is deterministic; with BatchNorm it uses the running statistics.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.core import config_utils
from experiments.core.config_utils import Field

Params = Any
ModelState = dict[str, Any]

MODEL_SCHEMA = {
    "family": Field(str),
    "width": Field(int),
    "depth": Field(int),
    "head_hidden": Field(int, 0),  # 0: the encoder width.
}
NORMS = ("batch", "none")
HEADS = ("linear", "mlp")


class MLPEncoder(nn.Module):
    """`depth` ReLU dense layers of `width` units on the flattened image."""

    width: int
    depth: int

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        del train  # No train-dependent layers.
        x = images.reshape(images.shape[0], -1)
        for _ in range(self.depth):
            x = nn.relu(nn.Dense(self.width)(x))
        return x


class CNNEncoder(nn.Module):
    """`depth` ReLU 3x3 conv layers with doubling channels and 2x2 pooling, globally pooled."""

    width: int
    depth: int

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        del train  # No train-dependent layers.
        x = images
        for i in range(self.depth):
            x = nn.relu(nn.Conv(self.width * 2**i, (3, 3))(x))
            if min(x.shape[1:3]) >= 2:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        return x.mean(axis=(1, 2))


def _norm(kind: str, train: bool) -> Callable[[jax.Array], jax.Array]:
    if kind == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9)
    return lambda x: x


class ResidualBlock(nn.Module):
    """A basic residual block: two 3x3 convs (with optional BatchNorm) and a skip connection."""

    channels: int
    stride: int
    norm: str

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        strides = (self.stride, self.stride)
        residual = nn.Conv(self.channels, (3, 3), strides, use_bias=self.norm == "none")(x)
        residual = nn.relu(_norm(self.norm, train)(residual))
        residual = nn.Conv(self.channels, (3, 3), use_bias=self.norm == "none")(residual)
        residual = _norm(self.norm, train)(residual)
        if x.shape[-1] != self.channels or self.stride != 1:
            x = nn.Conv(self.channels, (1, 1), strides, use_bias=self.norm == "none")(x)
            x = _norm(self.norm, train)(x)
        return nn.relu(x + residual)


class ResNetEncoder(nn.Module):
    """A small ResNet: stem, `depth` residual blocks, global average pooling."""

    width: int
    depth: int
    norm: str

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(self.width, (3, 3), use_bias=self.norm == "none")(images)
        x = nn.relu(_norm(self.norm, train)(x))
        channels = self.width
        for i in range(self.depth):
            downsample = i % 2 == 1 and min(x.shape[1:3]) >= 2
            channels = channels * 2 if downsample else channels
            x = ResidualBlock(channels, 2 if downsample else 1, self.norm)(x, train)
        return x.mean(axis=(1, 2))


class TransformerBlock(nn.Module):
    """A pre-LayerNorm transformer block: self-attention and an MLP, each with a residual.

    With `positions` (`(batch, k)` indices), only those positions' outputs are computed: their
    queries attend to every position's keys and values, and the residual and MLP run on the `k`
    rows. The parameters are the same either way.
    """

    num_heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        normed = nn.LayerNorm()(x)
        attention = nn.MultiHeadDotProductAttention(num_heads=self.num_heads)
        if positions is None:
            x = x + attention(normed)
        else:
            rows = positions[..., None]
            x = jnp.take_along_axis(x, rows, axis=1) + attention(
                jnp.take_along_axis(normed, rows, axis=1), normed
            )
        hidden = nn.gelu(nn.Dense(self.mlp_dim)(nn.LayerNorm()(x)))
        return x + nn.Dense(x.shape[-1])(hidden)


class ViTEncoder(nn.Module):
    """A small Vision Transformer with learned position embeddings and mean pooling."""

    width: int
    depth: int
    patch_size: int
    num_heads: int
    mlp_ratio: int

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        del train  # No train-dependent layers.
        patch = (self.patch_size, self.patch_size)
        x = nn.Conv(self.width, patch, strides=patch, padding="VALID")(images)
        x = x.reshape(x.shape[0], -1, self.width)
        position = self.param(
            "position_embedding", nn.initializers.normal(0.02), (1, x.shape[1], self.width)
        )
        x = x + position
        for _ in range(self.depth):
            x = TransformerBlock(self.num_heads, self.mlp_ratio * self.width)(x)
        return nn.LayerNorm()(x.mean(axis=1))


class TokensAt(NamedTuple):
    """Token ids and the positions whose features are wanted: a `text_transformer` input.

    Attributes:
      tokens: `(batch, length)` token ids.
      positions: `(batch, k)` indices into `length`: the encoder returns the `k` positions'
        features, `(batch, k, width)`, equal to those rows of its features of `tokens` alone.
    """

    tokens: Any
    positions: Any


class TextTransformerEncoder(nn.Module):
    """A BERT-style pre-LayerNorm encoder: per-token features of a batch of token ids.

    Padding is not masked out of the attention: a sentence's padding is a function of its length,
    so it carries no information the model could misuse, and it tells the model the length.
    Given `TokensAt`, the last block works at the requested positions only (see `TokensAt`).
    """

    vocab_size: int
    width: int
    depth: int
    num_heads: int
    mlp_ratio: int

    @nn.compact
    def __call__(self, tokens: jax.Array | TokensAt, train: bool = False) -> jax.Array:
        del train  # No train-dependent layers: dropout is off.
        positions = None
        if isinstance(tokens, TokensAt):
            tokens, positions = tokens
            positions = jnp.asarray(positions, jnp.int32)
            if positions.ndim != 2 or positions.shape[0] != tokens.shape[0]:
                raise ValueError(
                    "TokensAt.positions must have shape (batch, k) with the batch of "
                    f"TokensAt.tokens {tuple(tokens.shape)}; got {tuple(positions.shape)}."
                )
        # `init_model` feeds float zeros of the input shape; the ids themselves are integers.
        tokens = jnp.asarray(tokens).astype(jnp.int32)
        embed = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02))
        position = self.param(
            "position_embedding", nn.initializers.normal(0.02), (1, tokens.shape[1], self.width)
        )
        x = embed(tokens) + position
        for layer in range(self.depth):
            last = layer == self.depth - 1
            block = TransformerBlock(self.num_heads, self.mlp_ratio * self.width)
            x = block(x, positions if last else None)
        return nn.LayerNorm()(x)


class Head(nn.Module):
    """The task-specific output layer(s) on top of the features."""

    num_outputs: int
    kind: str
    hidden: int

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        if self.kind == "mlp":
            features = nn.relu(nn.Dense(self.hidden)(features))
        return nn.Dense(self.num_outputs)(features)


class EncoderHead(nn.Module):
    """`head(encoder(images))`; params split into `encoder` and `head` sub-trees."""

    encoder: nn.Module
    head: nn.Module

    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        return self.head(self.encoder(images, train=train))

    def features(self, images: jax.Array, train: bool = False) -> jax.Array:
        """The encoder's output: the representation that transfer reuses."""
        return self.encoder(images, train=train)


def _resnet(fields: dict[str, Any]) -> nn.Module:
    config_utils.choose(fields["norm"], dict.fromkeys(NORMS), "config.model.norm")
    return ResNetEncoder(fields["width"], fields["depth"], fields["norm"])


def _check_heads(fields: dict[str, Any]) -> None:
    if fields["num_heads"] < 1 or fields["width"] % fields["num_heads"]:
        raise config_utils.ConfigError(
            "config.model.num_heads must divide config.model.width; got "
            f"num_heads={fields['num_heads']}, width={fields['width']}."
        )


def _text_transformer(fields: dict[str, Any]) -> nn.Module:
    _check_heads(fields)
    if fields["input_vocab_size"] < 1:
        raise config_utils.ConfigError(
            "config.model.family='text_transformer' embeds token ids: it needs a token dataset "
            "(config.data.name='pcfg'), which sets the vocabulary size."
        )
    return TextTransformerEncoder(
        fields["input_vocab_size"],
        fields["width"],
        fields["depth"],
        fields["num_heads"],
        fields["mlp_ratio"],
    )


def _vit(fields: dict[str, Any]) -> nn.Module:
    if fields["patch_size"] < 1:
        raise config_utils.ConfigError(
            f"config.model.patch_size must be >= 1; got {fields['patch_size']}."
        )
    _check_heads(fields)
    return ViTEncoder(
        fields["width"],
        fields["depth"],
        fields["patch_size"],
        fields["num_heads"],
        fields["mlp_ratio"],
    )


class Family(NamedTuple):
    """A model family.

    Attributes:
      schema: the family's own `config.model` fields, beyond `MODEL_SCHEMA`.
      encoder: builds the encoder from the read fields.
    """

    schema: dict[str, Field]
    encoder: Callable[[dict[str, Any]], nn.Module]


FAMILIES = {
    "mlp": Family({}, lambda fields: MLPEncoder(fields["width"], fields["depth"])),
    "cnn": Family({}, lambda fields: CNNEncoder(fields["width"], fields["depth"])),
    "resnet": Family({"norm": Field(str, "batch")}, _resnet),
    "vit": Family(
        {"patch_size": Field(int, 2), "num_heads": Field(int, 4), "mlp_ratio": Field(int, 2)},
        _vit,
    ),
    "text_transformer": Family(
        {"num_heads": Field(int, 4), "mlp_ratio": Field(int, 4)}, _text_transformer
    ),
}


def build_model(
    model_config: ml_collections.ConfigDict,
    num_outputs: int,
    head: str = "linear",
    *,
    input_vocab_size: int = 0,
) -> EncoderHead:
    """Builds a model from `config.model`.

    Args:
      model_config: `config.model`: `family` (one of `FAMILIES`), `width`, `depth`,
        optional `head_hidden`, and the family's knobs (`norm`; `patch_size`, `num_heads`,
        `mlp_ratio`).
      num_outputs: size of the head's output (classes, projection or reconstruction size).
      head: `"linear"` or `"mlp"`.
      input_vocab_size: number of token ids of the inputs, for families that embed tokens
        (`text_transformer`); 0 for image data.

    Returns:
      An unbound `EncoderHead`; initialize it with `init_model`.

    Raises:
      ConfigError: an unknown family, norm or head (the message lists the valid ones), or a field
        of the wrong type or value (the message names it).
    """
    fields = config_utils.read_fields(model_config, MODEL_SCHEMA, "config.model")
    family = config_utils.choose(fields["family"], FAMILIES, "config.model.family")
    fields.update(config_utils.read_fields(model_config, family.schema, "config.model"))
    fields["input_vocab_size"] = input_vocab_size
    for name, minimum in (("width", 1), ("depth", 1), ("head_hidden", 0)):
        if fields[name] < minimum:
            raise config_utils.ConfigError(
                f"config.model.{name} must be >= {minimum}; got {fields[name]}."
            )
    config_utils.choose(head, dict.fromkeys(HEADS), "head")
    hidden = fields["head_hidden"] or fields["width"]
    return EncoderHead(family.encoder(fields), Head(num_outputs, head, hidden))


def init_model(
    model: nn.Module, seed: int, input_shape: tuple[int, ...]
) -> tuple[Params, ModelState]:
    """Initializes a model for inputs of shape `input_shape` (without the batch axis).

    Args:
      model: a model from `build_model`.
      seed: the initialization seed; the result is a function of it.
      input_shape: one example's shape, e.g. `(height, width, channels)` or `(max_len,)`.

    Returns:
      `(params, model_state)`: `model_state` holds the non-trainable collections
      (`{"batch_stats": ...}` for BatchNorm models, else `{}`).
    """
    # The "rbg" generator compiles several times faster than the default threefry on CPU, where
    # compiling the initializer dominates the start-up of these small models.
    key = jax.random.key(seed, impl="rbg")
    variables = dict(_compiled_init(model)(key, jnp.zeros((1, *input_shape), jnp.float32),
                                           train=False))
    params = variables.pop("params")
    return params, variables


@functools.lru_cache(maxsize=32)
def _compiled_init(model: nn.Module) -> Callable[..., Any]:
    """`model.init` as one compiled program (op-by-op dispatch would compile every initializer
    separately), shared by equal modules: the seeds of one configuration compile it once, which on
    a GPU, where each compile costs seconds, was most of a stacked run's start-up."""
    return jax.jit(model.init, static_argnames="train")


def apply_model(
    model: nn.Module,
    params: Params,
    model_state: ModelState,
    images: jax.Array,
    *,
    train: bool,
) -> tuple[jax.Array, ModelState]:
    """Runs the model; in training mode also returns the updated BatchNorm statistics.

    Args:
      model: a model from `build_model`.
      params: its parameters.
      model_state: its non-trainable collections (see `init_model`).
      images: NHWC float32 batch.
      train: training mode (BatchNorm uses and updates batch statistics) or evaluation mode
        (running statistics, left unchanged).

    Returns:
      `(outputs, new_model_state)`; in evaluation mode `new_model_state` is `model_state`.
    """
    variables = {"params": params, **model_state}
    if train and model_state:
        outputs, updates = model.apply(variables, images, train=True, mutable=list(model_state))
        return outputs, dict(updates)
    return model.apply(variables, images, train=train), model_state


def features(
    model: EncoderHead, params: Params, model_state: ModelState, images: jax.Array
) -> jax.Array:
    """The encoder's features in evaluation mode (e.g. for a linear probe).

    Args:
      model: a model from `build_model`.
      params: its parameters (only `params["encoder"]` is used).
      model_state: its non-trainable collections.
      images: NHWC float32 batch.

    Returns:
      A `(batch, feature_dim)` array.
    """
    variables = {"params": params, **model_state}
    return model.apply(variables, images, train=False, method=EncoderHead.features)


def num_params(tree: Params) -> int:
    """Total number of scalars in a pytree of arrays (e.g. `params` or `params["encoder"]`)."""
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))
