"""Tests of the language setting: masked-LM pretraining on the tiny PCFG, its exact gap, the
adversarial algorithm, and the curvature and probe measurements of its checkpoints."""

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import hessjax
from experiments.configs import pcfg as pcfg_config
from experiments.core import checkpoints, config_utils
from experiments.language import (
    adversary,
    evaluation,
    features,
    inside_outside,
    loss_gap,
    probes,
)
from experiments.measurement import embedded
from experiments.measurement import stage as measurement
from experiments.training import heads, models, objectives, runs, train
from tests._subprocess import HANG_GUARD_SECONDS

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY_OVERRIDES = {
    "data.pcfg_config": "tiny",
    "model.width": 16,
    "model.depth": 1,
    "model.num_heads": 2,
    "model.mlp_ratio": 2,
    "pretrain.batch_size": 16,
    "pretrain.warmup_steps": 2,
    "pretrain.steps": 6,
    "pretrain.checkpoint_steps": (0, 3),
    "pretrain.log_every": 3,
    "pretrain.adversary_refit_every": 2,
    "pretrain.adversary_batch_size": 8,
    "hessian.num_batches": 2,
    "hessian.batch_size": 8,
    "hessian.max_matvecs": 8,
    "hessian.fisher_samples": 4,
    "finetune.probe_steps": 10,
    "finetune.probe_examples": 40,  # Of the tiny grammar's 60 training sentences per task.
    # One fixed penalty: cross-validating the grid costs 10 fits a view (tested on its own below).
    "finetune.probe_l2_grid": (),
    "finetune.finetune_steps": 3,
    "finetune.finetune_batch_size": 8,
}


@pytest.fixture
def tiny_config(pcfg_data_dir: str) -> ml_collections.ConfigDict:
    """`configs/pcfg.py` shrunk to the tiny grammar and a few steps."""
    config = pcfg_config.get_config()
    config.data.data_dir = pcfg_data_dir
    for path, value in TINY_OVERRIDES.items():
        section, name = path.split(".")
        config[section][name] = value
    return config


def test_masked_lm_loss_is_finite_and_decreases(tiny_config):
    tiny_config.pretrain.learning_rate = 1e-2
    run = runs.build_run(tiny_config)
    params, model_state = run.init()
    opt_state = run.optimizer.init(params)
    probe = objectives.training_batch(run.objective, run.task.train, 64, seed=99, step=0)
    tokens, positions = probe["inputs"]
    assert positions.shape == (64, 1)
    assert (tokens == run.task.grammar.mask_id).sum(axis=1).tolist() == [1] * 64
    assert (tokens[np.arange(64), positions[:, 0]] == run.task.grammar.mask_id).all()
    eval_loss = jax.jit(run.eval_loss(model_state))
    initial = float(eval_loss(params, probe))
    train_step = train.make_train_step(run)
    for step in range(30):
        batch = objectives.training_batch(run.objective, run.task.train, 64, run.seed, step)
        params, opt_state, model_state, loss = train_step(params, opt_state, model_state, batch)
        assert np.isfinite(float(loss))
    final = float(eval_loss(params, probe))
    assert np.isfinite(initial) and final < 0.9 * initial, (initial, final)


def test_gap_uses_the_true_conditionals_and_is_nonnegative(tiny_config):
    run = runs.build_run(tiny_config)
    task = run.task
    tokens, lengths = task.test.tokens, task.test.lengths
    positions = np.random.default_rng(0).integers(0, lengths)
    expected = inside_outside.masked_conditionals(task.grammar, tokens, lengths, positions)
    np.testing.assert_allclose(task.true_conditionals[np.arange(len(lengths)), positions], expected)

    params, _ = run.init()
    gap = evaluation.masked_lm_gap(run.model, params, task)
    assert gap.value >= -1e-6 and gap.stderr > 0
    # The exact gap plus the optimum is the model's expected loss: compare it with the loss of
    # the observed words, every position masked in turn.
    log_probs = np.asarray(
        evaluation.every_position_masked(run.model, params, tokens, task.test.mask_id)
    )
    observed = -np.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
    inside = np.arange(tokens.shape[1]) < lengths[:, None]
    per_sentence = np.where(inside, observed, 0).sum(axis=1) / lengths
    noise = per_sentence.std() / np.sqrt(len(lengths))
    assert abs(per_sentence.mean() - (gap.value + task.optimal_loss.value)) < 4 * noise
    oracle = np.log(np.maximum(task.true_conditionals, 1e-300))
    assert abs(loss_gap.masked_lm_gap(task.true_conditionals, oracle, lengths).value) < 1e-9


def test_streamed_batches_are_fresh_and_a_function_of_seed_and_step(tiny_config):
    tiny_config.data.stream = True
    run = runs.build_run(tiny_config)
    stream, grammar = run.task.train, run.task.grammar
    first = stream.batch_at(32, seed=0, step=5)
    np.testing.assert_array_equal(first["tokens"], stream.batch_at(32, seed=0, step=5)["tokens"])
    later, other_seed = stream.batch_at(32, 0, 6), stream.batch_at(32, 1, 5)
    assert not np.array_equal(first["tokens"], later["tokens"])
    assert not np.array_equal(first["tokens"], other_seed["tokens"])
    assert 4 <= first["lengths"].min() and first["lengths"].max() <= 8
    inside = np.arange(8) < first["lengths"][:, None]
    assert np.all(first["tokens"][inside] < grammar.vocab_size)
    assert np.all(first["tokens"][~inside] == grammar.pad_id)
    # Over the steps of a run, sentences are not the pool's 200 over and over.
    drawn = {tuple(row) for step in range(40) for row in stream.batch_at(16, 0, step)["tokens"]}
    assert len(drawn) > run.task.splits["pretrain"]["tokens"].shape[0]
    seen = run.task.seen_sentences(0, 16)
    np.testing.assert_array_equal(seen.tokens[:16], stream.batch_at(16, 0, 0)["tokens"])
    assert seen.num_examples == run.task.test.num_examples


def test_adversary_refits_on_schedule_and_resumes_exactly(tiny_config, tmp_path, monkeypatch):
    tiny_config.pretrain.objective = "adversarial"
    refits = []

    class Counting(adversary.Adversary):
        def __init__(self, *args):
            super().__init__(*args)
            refit = self._refit

            def counted(params):
                # `pretrain` also traces `init` abstractly, for the probe's shapes when resuming.
                leaf = jax.tree_util.tree_leaves(params)[0]
                refits.extend([] if isinstance(leaf, jax.core.Tracer) else [1])
                return refit(params)

            self._refit = counted

    monkeypatch.setattr(adversary, "Adversary", Counting)
    result = train.pretrain(tiny_config, tmp_path / "full")
    # At the start, then at steps 2 and 4 of 6 (every 2 steps); none after the last step.
    assert len(refits) == 3
    assert result.checkpoint_steps == [0, 3, 6]
    records = [json.loads(line) for line in (tmp_path / "full" / train.METRICS_FILE).open()]
    assert all(np.isfinite(r["loss_gap"]) for r in records if "test_loss" in r)

    # Killed after step 3 (its probe is in that checkpoint) and resumed: the same parameters.
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / checkpoints.CHECKPOINT_DIR / "6")
    resumed = train.pretrain(tiny_config, tmp_path / "resumed")
    assert len(refits) == 4  # Step 4 only.
    for a, b in zip(
        jax.tree_util.tree_leaves(resumed.params),
        jax.tree_util.tree_leaves(result.params),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_binary_pretrains_the_pcfg_config_with_overrides(pcfg_data_dir, tmp_path):
    overrides = [
        f"--config.{path}={','.join(map(str, value)) if isinstance(value, tuple) else value}"
        for path, value in TINY_OVERRIDES.items()
        if path.split(".")[0] in ("data", "model", "pretrain")
    ]
    command = [
        sys.executable,
        "-m",
        "experiments.pretrain",
        "--config=experiments/configs/pcfg.py",
        f"--workdir={tmp_path}",
        f"--config.data.data_dir={pcfg_data_dir}",
        *overrides,
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_SECONDS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoints.steps(tmp_path) == [0, 3, 6]
    records = [json.loads(line) for line in (tmp_path / train.METRICS_FILE).open()]
    for name in ("loss_gap", "loss_gap_train"):
        assert len([r[name] for r in records if name in r]) == 3


def test_curvature_gap_and_probes_are_finite_with_stderr(tiny_config):
    run = runs.build_run(tiny_config)
    params, model_state = run.init()
    result = measurement.measure(run, params, model_state, measurement.read_settings(tiny_config))
    for name in ("trace", "fisher_trace", "trace_downstream"):
        assert np.isfinite(result[name]) and result[f"{name}_stderr"] > 0, (name, result)
    assert result["fisher_trace"] > 0 and 2 <= result["matvecs_trace"] <= 8
    assert result["nan_reason"] == {}
    gap = run.setting.checkpoint_metrics(run)(params, model_state)
    assert gap["loss_gap"] > 0 and gap["loss_gap_stderr"] > 0
    assert gap["loss_gap_train"] > 0 and gap["loss_gap_train_stderr"] > 0
    scores = probes.score(run, params, model_state, probes.read_settings(tiny_config), None)
    kinds = ("linear_probe", "linear_probe_mean", "linear_probe_masked", "finetune") + tuple(
        f"baseline_{kind}" for kind in probes.BASELINES
    )
    expected = sorted(f"{kind}_{task}_acc" for kind in kinds for task in ("a", "b", "c"))
    assert sorted(scores) == sorted([*expected, "seconds_probe"])
    assert all(0 <= scores[name] <= 1 for name in expected)
    # The baselines do not depend on the checkpoint: computed once, then reused.
    moved = jax.tree.map(lambda leaf: leaf + 0.1, params)
    again = probes.score(run, moved, model_state, probes.read_settings(tiny_config), None)
    assert {k: again[k] for k in again if k.startswith("baseline_")} == {
        k: scores[k] for k in scores if k.startswith("baseline_")
    }
    row = dict(scores)
    run.setting.derive_row(row)
    for task in ("a", "b", "c"):
        best = max(scores[f"baseline_{kind}_{task}_acc"] for kind in probes.BASELINES)
        assert row[f"linear_probe_{task}_gain"] == pytest.approx(
            scores[f"linear_probe_{task}_acc"] - best
        )
    for prefix in ("linear_probe", "linear_probe_mean", "linear_probe_masked"):
        assert row[f"{prefix}_gain"] == pytest.approx(
            np.mean([row[f"{prefix}_{task}_gain"] for task in ("a", "b", "c")])
        )
    # Deriving again (a row that already has the means over tasks) changes nothing.
    derived = dict(row)
    run.setting.derive_row(derived)
    assert derived == row
    best_c = max(scores[f"baseline_{kind}_c_acc"] for kind in probes.BASELINES)
    assert row["linear_probe_masked_c_gain"] == pytest.approx(
        scores["linear_probe_masked_c_acc"] - best_c
    )
    assert row["finetune_acc"] == pytest.approx(
        np.mean([scores[f"finetune_{task}_acc"] for task in ("a", "b", "c")])
    )


def test_downstream_loss_is_the_fitted_probe_on_the_task_sentences(tiny_config):
    run = runs.build_run(tiny_config)
    params, model_state = run.init()
    tiny_config.finetune.probe_steps = 500
    settings = measurement.read_settings(tiny_config)
    split = run.task.splits["task_a_train"]
    assert len(split["label"]) <= settings["downstream_examples"]  # The loss sees every sentence.
    loss_fn, both, batches = run.setting.downstream_problem(run, params, model_state, settings)
    # Fitted to the loss's own sentences (all 60 here) with the fixed penalty, not the transfer
    # stage's first `probe_examples` and cross-validated penalty.
    head = probes.fit_probe(run, params, {**settings, "probe_examples": 0, "probe_l2_grid": ()}, "a")
    np.testing.assert_array_equal(both["head"].kernel, head.kernel)
    batch = {name: split[name] for name in ("tokens", "span", "label")}
    for name, values in batch.items():
        np.testing.assert_array_equal(batches[name][0], values)
    gradient = jax.grad(loss_fn)(both, batch)["head"]
    # The probe minimizes CE + l2/2 |W|^2 on the same features and labels as the loss whose
    # curvature is measured: at the probe, the loss's head gradient is -l2 W and 0 for the bias.
    np.testing.assert_allclose(gradient.kernel, -settings["probe_l2"] * head.kernel, atol=2e-5)
    np.testing.assert_allclose(gradient.bias, 0.0, atol=2e-5)
    tiny_config.hessian.downstream_task = "z"
    with pytest.raises(config_utils.ConfigError, match="config.hessian.downstream_task"):
        measurement.read_settings(tiny_config)


def test_trace_after_embedding_into_a_wider_model(tiny_config):
    """Model size at the same function: the width-16 model embedded into width 32 has the same
    loss on the measured subset, and its trace is measured there; bad widths are refused."""
    tiny_config.sweep.widths = (16,)
    run = runs.build_run(tiny_config)
    params, model_state = run.init()
    settings = {**measurement.read_settings(tiny_config), "embed_width": 32}
    batches = measurement.fixed_batches(run.objective, run.task.train, settings)
    cells = embedded.embedded_trace(
        run, params, model_state, batches, jax.random.key(0), settings
    )
    loss_fn = run.eval_loss(model_state)
    first = jax.tree.map(lambda leaf: leaf[0], batches)
    second = jax.tree.map(lambda leaf: leaf[1], batches)
    loss = np.mean([float(loss_fn(params, b)) for b in (first, second)])
    assert cells["pretrain_loss_subset_embedded"] == pytest.approx(loss, rel=1e-5)
    assert np.isfinite(cells["trace_embedded"]) and cells["trace_embedded_stderr"] > 0
    # Into its own width, the embedding is the identity: the trace of the same operator.
    same = embedded.embedded_trace(
        run, params, model_state, batches, jax.random.key(0), {**settings, "embed_width": 16}
    )
    direct = hessjax.trace_until(
        hessjax.dataset_hvp_fn(loss_fn, params, batches), params, jax.random.key(0),
        rtol=settings["rtol"], max_matvecs=settings["max_matvecs"],
    )
    assert same["trace_embedded"] == pytest.approx(float(direct.value), rel=1e-4)
    # The stage measures it when asked, beside the rest.
    tiny_config.hessian.embed_width = 32
    result = measurement.measure(run, params, model_state, measurement.read_settings(tiny_config))
    assert np.isfinite(result["trace_embedded"]) and result["trace_embedded_stderr"] > 0
    assert result["pretrain_loss_subset_embedded"] == pytest.approx(
        result["pretrain_loss_subset"], rel=1e-5
    )
    for width, message in [(24, r"widths \[16\] do not"), (8, r"widths \[16\] do not"),
                           (-1, "must be >= 0")]:
        tiny_config.hessian.embed_width = width
        with pytest.raises(config_utils.ConfigError, match=f"config.hessian.embed_width.*{message}"):
            measurement.read_settings(tiny_config)


def test_the_masked_view_is_the_pretraining_prediction_at_each_masked_position(tiny_config):
    run = runs.build_run(tiny_config)
    params, _ = run.init()
    # Away from initialisation, so that positions differ.
    params = jax.tree.map(
        lambda leaf: leaf + 0.05 * jnp.sin(jnp.arange(leaf.size).reshape(leaf.shape)), params
    )
    tokens = jnp.asarray(run.task.splits["task_a_train"]["tokens"][:5])
    mask_id = run.task.grammar.mask_id
    view = features.masked_predictions(run.model, params, tokens, None, mask_id)
    count, length = tokens.shape
    vocab = view.shape[1] // length
    assert view.shape == (count, length * vocab) and vocab == run.task.input_vocab_size
    blocks = np.asarray(view).reshape(count, length, vocab)
    np.testing.assert_allclose(np.exp(blocks).sum(-1), 1.0, rtol=1e-5)
    for position in (0, length - 1):
        masked = tokens.at[:, position].set(mask_id)
        # The whole model on the masked sentence, read at the position: what the loss sees.
        logits, _ = models.apply_model(run.model, params, {}, masked, train=False)
        expected = jax.nn.log_softmax(logits[:, position], axis=-1)
        np.testing.assert_allclose(blocks[:, position], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mask_id"):
        features.masked_predictions(run.model, params, tokens, None)


def test_standardized_probes_scale_by_the_train_split_and_baselines_keep_their_better_fit(
    tiny_config,
):
    run = runs.build_run(tiny_config)
    vocab = run.task.input_vocab_size
    one_hot = lambda split: features.one_hot_tokens(split["tokens"], vocab)
    settings = probes.read_settings(tiny_config)
    scaled = probes._standardized(one_hot, run, "a", settings)
    # By the probes' training sentences: the first `probe_examples` of the train split.
    split = run.task.splits["task_a_train"]
    first = {name: values[: settings["probe_examples"]] for name, values in split.items()}
    train = scaled(first)
    raw = one_hot(first).astype(np.float64)
    varying = raw.std(axis=0) > 0
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(train.std(axis=0)[varying], 1, rtol=1e-9)
    assert np.all(train[:, ~varying] == 0)  # A constant column becomes 0, not NaN.
    # The test split is scaled by the train split's statistics, not its own.
    test_raw = one_hot(run.task.splits["task_a_test"]).astype(np.float64)
    mean, scale = raw.mean(axis=0), np.where(raw.std(axis=0) > 0, raw.std(axis=0), 1)
    np.testing.assert_allclose(
        scaled(run.task.splits["task_a_test"]), (test_raw - mean) / scale, rtol=1e-12
    )
    settings = probes.read_settings(tiny_config)
    accuracy = {
        kind: probes._probe_accuracy(one_hot, run, settings, "a", kind) for kind in (False, True)
    }
    for standardize, expected in ((False, accuracy[False]), (True, max(accuracy.values()))):
        settings["probe_standardize"] = standardize
        assert probes._baseline_accuracy(one_hot, run, settings, "a") == expected


def test_probes_train_on_the_first_examples_and_cross_validate_l2_on_them_only(tiny_config):
    run = runs.build_run(tiny_config)
    vocab = run.task.input_vocab_size
    seen = []

    def one_hot(split):
        seen.append(len(split["label"]))
        return features.one_hot_tokens(split["tokens"], vocab)

    settings = {**probes.read_settings(tiny_config), "probe_examples": 30}
    head = probes._fit(one_hot, run, settings, "a")
    assert seen == [30]
    train = run.task.splits["task_a_train"]
    inputs = one_hot(train)[:30]
    classes, steps = head.kernel.shape[1], settings["probe_steps"]
    expected = heads.fit_logistic(inputs, train["label"][:30], classes, l2=settings["probe_l2"], steps=steps)
    np.testing.assert_array_equal(head.kernel, expected.kernel)
    # With a grid, the chosen l2 is the grid's best on 3 folds of those 30 sentences, and a grid of
    # one value is that value.
    grid = {**settings, "probe_l2_grid": (1e-3, 1e-2, 1e1)}
    chosen = probes._cross_validated_l2(inputs, train["label"][:30], classes, grid)
    assert chosen in (1e-3, 1e-2, 1e1)
    single = probes._fit(one_hot, run, {**settings, "probe_l2_grid": (5.0,)}, "a")
    heavy = heads.fit_logistic(inputs, train["label"][:30], classes, l2=5.0, steps=steps)
    np.testing.assert_array_equal(single.kernel, heavy.kernel)
    assert np.abs(single.kernel).max() < np.abs(head.kernel).max()
    with pytest.raises(config_utils.ConfigError, match=r"probe_examples = 1000000 exceeds"):
        probes._fit(one_hot, run, {**settings, "probe_examples": 1_000_000}, "a")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("probe_l2_grid", (1e-3, 0.0), r"config\.finetune\.probe_l2_grid must list penalties > 0"),
        ("probe_examples", -1, r"config\.finetune\.probe_examples must be >= 0"),
    ],
)
def test_bad_probe_settings_are_named(tiny_config, field, value, message):
    tiny_config.finetune[field] = value
    with pytest.raises(config_utils.ConfigError, match=message):
        probes.read_settings(tiny_config)
