"""Smoke test of the benchmarks: the modules import, the workloads agree across frameworks, and the
scripts run in their ``--quick`` mode (figures meaningless: the code is checked, nothing measured).

On the loaded 2-core CPU each quick run took 45-55 s (load average 6); about half that on a quiet one.
"""

import importlib
import importlib.util

import jax
import numpy as np
import pytest

import hessjax
from benchmarks import workloads
from tests._subprocess import HANG_GUARD_SECONDS

BENCHMARK_MODULES = ("accuracy", "cpu", "figures", "first_call", "fresh", "gpu", "gpu_scale",
                     "host_costs", "jax_peers", "overhead", "peers", "timing", "workloads")


def _tiny_workloads():
    # ResNet-18 is left to the agreement check that opens benchmarks/gpu.py: compiling its
    # batch-norm HVP takes a minute on a 2-core CPU.
    return [workloads.digits_mlp((64, 8, 10), batch_size=32),
            workloads.digits_cnn((2, 3), batch_size=16),
            workloads.synthetic_transformer(2, 8, workloads.TransformerShape(20, 8, 16, 1, 2))]


@pytest.mark.parametrize("name", BENCHMARK_MODULES)
def test_benchmark_modules_import(name):
    importlib.import_module(f"benchmarks.{name}")


def test_jax_workloads_agree_with_float64_reverse_over_reverse():
    for workload in _tiny_workloads():
        workloads.check_agreement(workload, hvp=hessjax.hvp, use_torch=False)


def test_jax_and_torch_workloads_agree():
    pytest.importorskip("torch")
    for workload in _tiny_workloads():
        workloads.check_agreement(workload, hvp=hessjax.hvp, use_torch=True)


def test_scale_decoder_remat_and_bfloat16_compute_the_same_curvature():
    from benchmarks import gpu_scale

    shape = gpu_scale.Decoder(depth=3, width=16, num_heads=2, vocab_size=50, length=8,
                              batch_size=2)
    params = gpu_scale.init_params(shape, jax.random.key(0))
    assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == shape.num_params
    batch = gpu_scale.make_batch(shape)
    v = jax.tree_util.tree_map(lambda x: jax.random.normal(jax.random.key(1), x.shape), params)
    losses, products = {}, {}
    for setting in gpu_scale.SETTINGS:
        loss_fn = gpu_scale.make_loss(shape, setting)
        losses[setting], products[setting] = loss_fn(params, batch), hessjax.hvp(loss_fn, params,
                                                                                 batch, v)
    plain, remat, bf16 = gpu_scale.SETTINGS
    assert abs(float(losses[plain]) - np.log(shape.vocab_size)) < 0.5  # near-uniform at init
    np.testing.assert_allclose(losses[remat], losses[plain], rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(products[remat]),
                    jax.tree_util.tree_leaves(products[plain])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(losses[bf16], losses[plain], rtol=2e-2)
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])
    cosine = np.dot(flat(products[bf16]), flat(products[plain])) / (
        np.linalg.norm(flat(products[bf16])) * np.linalg.norm(flat(products[plain])))
    assert cosine > 0.99, cosine


@pytest.mark.slow  # A benchmark's quick run: every first-call case, fresh processes (~30 s) (suite time).
def test_first_call_quick_run(capsys):
    from benchmarks import first_call

    first_call.main(["--quick", "--no-record"])
    out = capsys.readouterr().out
    assert "failed" not in out, out
    for case in ("trace hutch++", "fisher_trace", "hessian_summary", "masked-LM transformer"):
        assert case in out, case


def test_run_script_reads_the_programs_from_jax_compile_log(tmp_path):
    from benchmarks import fresh

    script = tmp_path / "script.py"
    script.write_text("import jax\nprint(jax.jit(lambda x: x * 2)(3.0))\n")
    result = fresh.run_script(script, timeout=HANG_GUARD_SECONDS)
    assert "6.0" in result["stdout"], result
    assert "<lambda>" in result["program_names"] and result["compile_s"] > 0, result


def test_first_call_reads_the_readme_example_the_readme_test_runs():
    from benchmarks import first_call
    from tests import test_readme

    assert first_call.readme_example() == test_readme._library_example()


@pytest.mark.slow  # A benchmark's quick run: each call against a bare jit (~15 s) (suite time).
def test_overhead_quick_run(capsys):
    from benchmarks import overhead

    overhead.main(["--quick", "--no-record"])
    out = capsys.readouterr().out
    for call in ("bare jit(vmap(hvp_fn)) product", "trace (hutchinson)", "diagonal", "block_traces",
                 "lanczos"):
        assert call in out, call


@pytest.mark.slow  # A benchmark's quick run: runs every peer's rows (~15 s) (suite time).
def test_jax_peers_quick_run(capsys):
    from benchmarks import jax_peers

    jax_peers.main(["--quick", "--no-record"])
    out = capsys.readouterr().out
    assert "failed" not in out, out
    assert "hessjax xtrace" in out and "Gauss-Newton" in out and "control" in out
    missing = [peer for peer in ("traceax", "matfree") if importlib.util.find_spec(peer) is None]
    for peer in missing:
        assert f"skipped: {peer} is not installed" in out
    if missing:
        pytest.skip(f"hessjax's rows ran; {', '.join(missing)} not installed, their rows skipped "
                    "(pip install traceax==1.0.2 matfree==0.6.3)")


def test_gpu_benchmark_runs_the_workloads_asked_for():
    from benchmarks import gpu

    assert [w.name for w in gpu.workloads(True, ("decoder",))] == ["GPT-2-style d32 L2"]
    assert len(gpu.workloads(True)) == 2
    for names in (("resnet18", "vgg"), ()):
        with pytest.raises(ValueError, match="workloads must be a non-empty subset"):
            gpu.workloads(True, names)
    with pytest.raises(SystemExit):
        gpu.main(["--tiny", "--workloads=decoder,vgg"])
