"""Fixtures of the PCFG tests: a small ambiguous grammar and its brute-force enumeration."""

import numpy as np
import pytest

from experiments.language.grammar import Grammar, make_grammar
from tests.experiments.language.brute_force import (
    MAX_ENUMERATED_LENGTH,
    NUM_NONTERMINALS,
    VOCAB,
    enumerate_parses,
)


@pytest.fixture(scope="session")
def cyclic_grammar() -> Grammar:
    """A dense 3-symbol grammar with recursive rules (S -> S S etc.), so parses are ambiguous."""
    rng = np.random.default_rng(0)
    n, v = NUM_NONTERMINALS, VOCAB
    binary = 0.3 * rng.dirichlet(np.ones(n * n), size=n).reshape(n, n, n)
    emit = 0.7 * rng.dirichlet(np.ones(v), size=n)
    return make_grammar(binary, emit, start=0)


@pytest.fixture(scope="session")
def enumerated(cyclic_grammar):
    """Length -> (joint, spans, left_child) of `enumerate_parses`, for lengths up to 4."""
    return {n: enumerate_parses(cyclic_grammar, n) for n in range(1, MAX_ENUMERATED_LENGTH + 1)}
