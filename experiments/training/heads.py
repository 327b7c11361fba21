r"""Linear heads on frozen features: one layout, two fits.

A `LinearHead` is `features @ kernel + bias`. Both settings score transfer with a logistic
regression fitted to convergence on frozen features (`fit_logistic`: the linear probe, and the
head under which the Hessian stage measures a downstream loss); the language setting's adversary
refits a ridge least-squares head inside the training step (`fit_ridge`, closed form, traceable).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl
from jax.typing import ArrayLike
from scipy import optimize, special


class LinearHead(NamedTuple):
    """A linear map from features to one output per class (a pytree: numpy or JAX arrays).

    Attributes:
      kernel: `(feature_dim, num_classes)` weights.
      bias: `(num_classes,)` offsets.
    """

    kernel: Any
    bias: Any

    def apply(self, features: Any) -> Any:
        """The outputs `features @ kernel + bias` (numpy in, numpy out; traceable on JAX arrays)."""
        return features @ self.kernel + self.bias

    def accuracy(self, features: ArrayLike, labels: np.ndarray) -> float:
        """The fraction of `labels` predicted by the arg-max of the outputs."""
        predictions = np.argmax(np.asarray(features) @ self.kernel + self.bias, axis=-1)
        return float(np.mean(predictions == labels))


def fit_logistic(
    features: ArrayLike, labels: np.ndarray, num_classes: int, *, l2: float, steps: int
) -> LinearHead:
    r"""Multinomial logistic regression on frozen features, by full-batch L-BFGS.

    Minimizes :math:`\frac1N \sum_i \ell_{CE}(W^\top f_i + b, y_i) + \frac{\lambda}{2} \|W\|^2`,
    strictly convex for :math:`\lambda > 0`, with SciPy's L-BFGS-B in float64 from zero: exact
    gradients of a problem this small cost microseconds in numpy, while compiling an XLA solver
    would cost seconds per feature shape. Deterministic.

    Args:
      features: `(N, feature_dim)`.
      labels: `(N,)` integer labels in `[0, num_classes)`.
      num_classes: the number of classes.
      l2: the ridge penalty :math:`\lambda` on the weights, > 0.
      steps: the most L-BFGS iterations (it stops earlier once the gradient vanishes).

    Returns:
      The fitted `LinearHead` (float32 numpy arrays).
    """
    features = np.asarray(features, np.float64)
    count, dimension = features.shape
    targets = np.eye(num_classes)[labels]

    def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
        kernel, bias = flat[:-num_classes].reshape(dimension, num_classes), flat[-num_classes:]
        logits = features @ kernel + bias
        log_probabilities = logits - special.logsumexp(logits, axis=-1, keepdims=True)
        value = -np.sum(targets * log_probabilities) / count + 0.5 * l2 * np.sum(kernel**2)
        residual = (np.exp(log_probabilities) - targets) / count
        gradient = np.concatenate(
            [(features.T @ residual + l2 * kernel).ravel(), residual.sum(axis=0)]
        )
        return value, gradient

    start = np.zeros((dimension + 1) * num_classes)
    # One BLAS thread: at these sizes threads only wait for each other, and on cores that other
    # work keeps busy (a study's pretraining workers) a threaded product was 10x slower.
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        solution = optimize.minimize(
            objective, start, jac=True, method="L-BFGS-B", options={"maxiter": steps}
        ).x
    return LinearHead(
        solution[:-num_classes].reshape(dimension, num_classes).astype(np.float32),
        solution[-num_classes:].astype(np.float32),
    )


def fit_ridge(features: jax.Array, targets: jax.Array, ridge: float | jax.Array) -> LinearHead:
    r"""Ridge least squares, :math:`\min_{W,b} \frac1N\|F W + b - Y\|^2 + \alpha \|W\|^2`.

    Closed form on centred data: :math:`W = (F_c^\top F_c / N + \alpha I)^{-1} F_c^\top Y_c / N`,
    :math:`b = \bar y - \bar f W`. Traceable (`jit`, `grad`).

    Args:
      features: `(N, width)`.
      targets: `(N, num_labels)` one-hot labels.
      ridge: :math:`\alpha > 0`.

    Returns:
      The `LinearHead` (JAX arrays).
    """
    mean_features, mean_targets = features.mean(axis=0), targets.mean(axis=0)
    centred = features - mean_features
    gram = centred.T @ centred / len(features) + ridge * jnp.eye(features.shape[1])
    kernel = jnp.linalg.solve(gram, centred.T @ (targets - mean_targets) / len(features))
    return LinearHead(kernel, mean_targets - mean_features @ kernel)
