"""The library installs with JAX and numpy alone; the README's commands are the ones CI runs."""

import pathlib
import subprocess
import sys

import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENT_PACKAGES = {
    "flax", "optax", "orbax", "tensorflow_datasets", "array_record", "absl", "ml_collections",
    "scipy", "matplotlib", "sklearn",
}


def test_importing_hessjax_loads_no_experiment_dependency():
    code = (
        "import sys, hessjax; "
        "print(sorted({name.split('.')[0] for name in sys.modules}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert not [name for name in EXPERIMENT_PACKAGES if f"'{name}'" in loaded]


def test_the_library_depends_on_jax_and_numpy_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert [dependency.split(">")[0] for dependency in project["dependencies"]] == ["jax", "numpy"]
    assert "flax>=0.10" in project["optional-dependencies"]["experiments"]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = next(
        line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("pip ")
    )
    assert f"```bash\n{command}\n```" in readme
