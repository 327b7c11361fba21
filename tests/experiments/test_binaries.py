"""What every binary shares: the persistent compilation cache."""

import os
import subprocess
import sys


def test_binaries_store_compiled_programs_in_the_compilation_cache(tmp_path):
    code = (
        "import jax, jax.numpy as jnp; from experiments.core import binaries; "
        "print(binaries.enable_compilation_cache()); "
        "jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()"
    )
    environment = {**os.environ, "HESSJAX_COMPILATION_CACHE": str(tmp_path / "cache")}
    for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        environment.pop(name, None)
    output = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == str(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir())  # The program was stored.
    environment["HESSJAX_COMPILATION_CACHE"] = ""
    output = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "None"
