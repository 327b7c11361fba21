"""Full fine-tuning of a masked-LM encoder on a span task: the paper's second transfer measure.

The encoder and a zero-initialised linear head on the primary view (every position's features
concatenated, `features.concatenated_features`) are trained together with the cross-entropy of
the task's labels for a fixed budget of `finetune_steps` Adam steps of `finetune_batch_size`
sentences of `task_<task>_train` (its first `probe_examples`, as the probes) at
`finetune_learning_rate`; the score is the accuracy on
`task_<task>_test`. The head starts at zero and the data order is a function of the run's seed,
so every checkpoint of a run is fine-tuned the same way. One compiled step per model and settings.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.language import features
from experiments.training import evaluation, heads, models, pipeline, runs


def _loss(model: models.EncoderHead, params: dict[str, Any], batch: dict[str, jax.Array]) -> Any:
    encoded = features.concatenated_features(model, params["model"], batch["tokens"], None)
    logits = params["head"].apply(encoded)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()


def _step(model: models.EncoderHead, learning_rate: float) -> Any:
    optimizer = optax.adam(learning_rate)

    def build() -> Any:
        @jax.jit
        def step(params: Any, opt_state: Any, batch: dict[str, jax.Array]) -> tuple[Any, Any]:
            grads = jax.grad(lambda p: _loss(model, p, batch))(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        return optimizer, step

    return evaluation.shared_function(("language_finetune_step", model, learning_rate), build)


def fine_tune(
    run: runs.Run, params: models.Params, settings: dict[str, Any], task: str
) -> float:
    """Test accuracy of `task` after fine-tuning the encoder and a new head (module docstring).

    Args:
      run: the pretraining run (its model, seed and task splits).
      params: the checkpoint's parameters (the masked-LM head is not used).
      settings: the transfer settings (`finetune_steps`, `finetune_batch_size`,
        `finetune_learning_rate`).
      task: the span task.

    Returns:
      The fraction of `task_<task>_test` predicted correctly.
    """
    train, test = run.task.splits[f"task_{task}_train"], run.task.splits[f"task_{task}_test"]
    if settings.get("probe_examples"):  # The probes' training sentences (`config.finetune`).
        train = {name: values[: settings["probe_examples"]] for name, values in train.items()}
    optimizer, step = _step(run.model, settings["finetune_learning_rate"])
    encoder = {"encoder": params["encoder"]}  # The masked-LM head takes no part.
    width = jax.eval_shape(_encoder(run.model), encoder, train["tokens"][:1]).shape[1]
    classes = run.task.grammar.num_labels
    head = heads.LinearHead(jnp.zeros((width, classes)), jnp.zeros(classes))
    tuned = {"model": encoder, "head": head}
    opt_state = optimizer.init(tuned)
    batch_size = min(settings["finetune_batch_size"], len(train["label"]))
    for index in range(settings["finetune_steps"]):
        rows = pipeline.batch_indices(len(train["label"]), batch_size, run.seed, index)
        tuned, opt_state = step(
            tuned, opt_state, {"tokens": train["tokens"][rows], "label": train["label"][rows]}
        )
    encoded = _encoder(run.model)(tuned["model"], test["tokens"])
    return tuned["head"].accuracy(np.asarray(encoded), test["label"])


def _encoder(model: models.EncoderHead) -> Any:
    return evaluation.shared_function(
        ("concatenated_features", model),
        lambda: jax.jit(lambda p, tokens: features.concatenated_features(model, p, tokens, None)),
    )
