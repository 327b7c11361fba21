"""Smoke test of the benchmarks: the modules import and the workloads agree across frameworks."""

import importlib

import pytest

import hessjax
from benchmarks import workloads

BENCHMARK_MODULES = ("accuracy", "cpu", "figures", "gpu", "peers", "timing", "workloads")


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
