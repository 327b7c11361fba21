"""One process of a two-process run, started by tests/experiments/test_multihost.py.

Checks `experiments.core.multihost.agree` on a value that both processes hold and on one that differs
between them (as the finished jobs do when the workdir is not shared). Prints one JSON object.
"""

import json

import jax

from experiments.core import multihost


def main() -> None:
    multihost.initialize()
    multihost.agree("the same on every process", "a shared value")
    try:
        multihost.agree(f"process {jax.process_index()}", "the process index")
        error = None
    except RuntimeError as disagreement:
        error = str(disagreement)
    print(json.dumps({"process_index": jax.process_index(), "error": error}), flush=True)


if __name__ == "__main__":
    main()
