"""The Fisher-sampling trace against the Fisher computed exactly by enumerating labels."""

import jax
import jax.numpy as jnp
import numpy as np

import hessjax
from tests import toy


def _exact_fisher_trace(logits_fn, params, inputs, weights):
    logits = logits_fn(params, inputs)
    probs = jax.nn.softmax(logits)
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def score_norm(j, label):
        log_prob = lambda f: jax.nn.log_softmax(logits_fn(unravel(f), inputs))[j, label]
        return jnp.sum(jax.grad(log_prob)(flat) ** 2)

    total = 0.0
    for j in range(logits.shape[0]):
        for label in range(logits.shape[1]):
            total += weights[j] * probs[j, label] * score_norm(j, label)
    return float(total / weights.sum())


def test_fisher_trace_is_unbiased_with_and_without_weights(x64):
    params = toy.mlp_params(jax.random.key(0), sizes=(5, 4, 3))
    inputs, _ = toy.classification_batch(jax.random.key(1), n=6)
    weights = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0, 2.0])
    cases = [(toy.mlp_logits, jnp.ones(6)),
             (lambda p, x: (toy.mlp_logits(p, x), weights), weights)]
    for logits_fn, case_weights in cases:
        plain = lambda p, x, f=logits_fn: f(p, x)[0] if isinstance(f(p, x), tuple) else f(p, x)
        truth = _exact_fisher_trace(plain, params, inputs, case_weights)
        estimate = hessjax.fisher_trace(logits_fn, params, inputs, jax.random.key(2),
                                        num_samples=4000, chunk_size=1000)
        assert int(estimate.num_matvecs) == 4000
        assert abs(float(estimate.value) - truth) < 4 * float(estimate.stderr), (truth, estimate)
        assert float(estimate.stderr) < 0.1 * truth


def test_fisher_equals_hessian_trace_for_a_well_specified_model(x64):
    # Labels drawn from the model itself: the expected Hessian of the loss is the Fisher.
    params = toy.mlp_params(jax.random.key(0), sizes=(5, 3))
    inputs, _ = toy.classification_batch(jax.random.key(1), n=8)
    fisher = _exact_fisher_trace(toy.mlp_logits, params, inputs, jnp.ones(8))
    probs = jax.nn.softmax(toy.mlp_logits(params, inputs))
    hessian_trace = 0.0
    for label in range(3):
        labels = jnp.full((8,), label)
        per_example = [np.trace(toy.exact_hessian(toy.mlp_loss, params, (inputs[j:j + 1],
                                                                          labels[j:j + 1])))
                       for j in range(8)]
        hessian_trace += float(jnp.mean(probs[:, label] * jnp.asarray(per_example)))
    np.testing.assert_allclose(fisher, hessian_trace, rtol=1e-8)
