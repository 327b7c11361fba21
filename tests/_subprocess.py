"""Starting fresh Python processes with their own CPU device count, for the multi-device tests.

The number of CPU devices is fixed when JAX starts, and the pytest process has started it with one:
multi-device checks run as scripts in child processes.
"""

from __future__ import annotations

import os
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

# The programs are tiny and compiling them is most of the run time: XLA's cheapest CPU backend
# settings halve it, and cannot change a float64 result beyond rounding.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def environment(num_devices: int, **variables: str) -> dict[str, str]:
    """This process's environment for a child with ``num_devices`` CPU devices and ``variables``."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("HESSJAX_", "JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices} {_FAST_COMPILE}")
    env.update(variables)
    return env


def command(script: str) -> list[str]:
    """The command line running ``tests/<script>`` with this interpreter."""
    return [sys.executable, os.path.join(TESTS, script)]
