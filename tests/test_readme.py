"""The README's library example runs and its numbers are right."""

import pathlib
import re

import jax
import jax.flatten_util
import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _library_example() -> str:
    section = README.read_text().split("## Library example", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_library_example(capsys):
    namespace: dict = {}
    exec(compile(_library_example(), str(README), "exec"), namespace)
    assert "trace = " in capsys.readouterr().out
    params, loss_fn, batch = namespace["params"], namespace["loss_fn"], (namespace["x"],
                                                                          namespace["y"])
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    hessian = np.asarray(jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), batch)))(flat),
                         np.float64)
    eigenvalues = np.linalg.eigvalsh((hessian + hessian.T) / 2)
    estimate = namespace["estimate"]
    assert abs(float(estimate.value) - eigenvalues.sum()) < 4 * float(estimate.stderr) + 1e-3
    np.testing.assert_allclose(namespace["eigen"].values, eigenvalues[::-1][:3], rtol=2e-3)
    np.testing.assert_allclose(float(namespace["density"].moment(0)), 1.0, rtol=1e-5)
