import os

# The test programs are tiny, so compiling them is most of the suite's time: XLA's cheapest CPU
# compiler settings cut compile time about 5x (results agree to rounding). Set before JAX starts;
# child processes inherit them.
os.environ["XLA_FLAGS"] = " ".join(filter(None, [
    os.environ.get("XLA_FLAGS"),
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"]))

# Binaries started by the tests compile afresh: no persistent compilation cache outside the test
# that checks it (`experiments.core.binaries`).
os.environ.setdefault("HESSJAX_COMPILATION_CACHE", "")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Runs the test with 64-bit floats, for checks against exact answers."""
    with jax.enable_x64(True):
        yield
