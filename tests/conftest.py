import jax
import pytest


@pytest.fixture
def x64():
    """Runs the test with 64-bit floats, for checks against exact answers."""
    with jax.enable_x64(True):
        yield
