"""Starting fresh Python processes with their own CPU device count, for the multi-device tests.

The number of CPU devices is fixed when JAX starts, and the pytest process has started it with one:
multi-device checks run as scripts in child processes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

# A limit on a child's (or a wait's) wall time is a guard against a hang, never a speed target:
# generous enough for a 2-core host loaded 8-9 by a study running beside the suite.
HANG_GUARD_SECONDS = 600

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


def free_loopback_port() -> int:
    """A TCP port of 127.0.0.1 that is free now, for a jax.distributed coordinator."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_processes(command: list[str], *, num_processes: int, num_devices: int, timeout: float,
                  cwd: str = ROOT) -> list[subprocess.CompletedProcess]:
    """Runs ``command`` as ``num_processes`` processes of one multi-host JAX run on 127.0.0.1.

    Each process gets the ``HESSJAX_*`` variables of ``hessjax.sharding.initialize_distributed`` (a
    free coordinator port, its own process id) and ``num_devices`` CPU devices. Their output goes
    to files, not pipes: a process blocked on a full pipe would stall the others in a collective.
    All are killed if one is still running after ``timeout`` seconds.

    Returns:
        One ``CompletedProcess`` (return code, stdout, stderr) per process, by process id.
    """
    address = f"127.0.0.1:{free_loopback_port()}"
    with contextlib.ExitStack() as stack:
        files = [[stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(2)]
                 for _ in range(num_processes)]
        processes = [
            subprocess.Popen(
                command, cwd=cwd, stdout=stdout, stderr=stderr, text=True,
                env=environment(
                    num_devices, HESSJAX_COORDINATOR=address,
                    HESSJAX_NUM_PROCESSES=str(num_processes), HESSJAX_PROCESS_ID=str(index),
                    # JAX's coordinator listens on every interface unless told otherwise.
                    JAX_COORDINATOR_BIND_ADDRESS=address))
            for index, (stdout, stderr) in enumerate(files)]
        deadline = time.monotonic() + timeout
        try:
            for process in processes:
                process.wait(timeout=max(deadline - time.monotonic(), 0))
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()

        def read(file: IO[str]) -> str:
            file.seek(0)
            return file.read()

        return [subprocess.CompletedProcess(command, process.returncode, read(stdout), read(stderr))
                for process, (stdout, stderr) in zip(processes, files, strict=True)]
