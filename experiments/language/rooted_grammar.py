r"""A grammar family shaped like the one of Liu et al. (2023)'s release, scaled by its parameters.

The authors' grammar (``pcfg/rule_deep_mlm.txt`` of their code): the start symbol picks one of 9
root symbols, each of which rewrites to a fixed pair of level-1 symbols; 4 levels of 10
non-terminals, the first three with about 20 binary rules into the next level plus one word each;
the last level are preterminals emitting about 100 words each out of about 200, so one word comes
from several preterminals and a sentence has many parses. :func:`rooted_grammar` draws such a
grammar from a :class:`RootedGrammarSpec` of any size:

* start -> root ``k`` with probability ``pi_k`` (Dirichlet), and root ``k`` -> ``(B_k, C_k)``, a
  pair of level-1 symbols distinct from every other root's pair;
* a symbol of level ``l < L`` -> ``B C`` (two level-``l+1`` symbols; ``rules_per_nonterminal``
  rules drawn with repeats merged) with total probability ``1 - emission_prob``, or -> one word of
  its own with probability ``emission_prob``;
* a preterminal (level ``L``) -> one of ``words_per_preterminal`` words.

The :class:`~experiments.language.grammar.Grammar` is in Chomsky normal form, which has no unary
rules, so the roots are not non-terminals: the start symbol's binary rules are the ``K`` root
pairs, with the roots' probabilities. :func:`root_pairs` reads them back, in a fixed order that
numbers the roots. Non-terminals: ``0`` is the start symbol, then ``num_levels`` levels of
``nonterminals_per_level`` symbols; sentences have between 2 and ``2 ** num_levels`` words.

Example::

  grammar = rooted_grammar(RootedGrammarSpec(seed=0))
  root_pairs(grammar)  # [num_roots, 2] level-1 symbols of each root

References:
  H. Liu, S. M. Xie, Z. Li and T. Ma, "Same Pre-training Loss, Better Downstream: Implicit Bias
  Matters for Language Models", ICML 2023.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments.language.grammar import Grammar, make_grammar

# Redraws of the root pairs until every level-1 symbol is in one and no two roots share a pair.
_ROOT_ATTEMPTS = 1000


@dataclasses.dataclass(frozen=True)
class RootedGrammarSpec:
    """Sizes and seed of a grammar of :func:`rooted_grammar`.

    Attributes:
      seed: seed of the grammar's structure and probabilities.
      num_roots: root symbols ``K`` (the classes of task A), >= 2.
      num_levels: levels ``L`` of non-terminals below the roots, the last one preterminals, >= 2;
        sentences have at most ``2 ** L`` words.
      nonterminals_per_level: non-terminals on every level, preterminals included.
      rules_per_nonterminal: binary rules drawn for each non-preterminal (repeats merge).
      words_per_preterminal: words each preterminal emits; words are shared between
        preterminals once ``nonterminals_per_level * words_per_preterminal > vocab_size``.
      vocab_size: number of words ``V``.
      emission_prob: probability that a non-preterminal emits its one word instead of
        branching, in ``[0, 1)``.
      concentration: Dirichlet concentration of the root and rule probabilities (small: a few
        rules dominate each symbol).
      word_concentration: Dirichlet concentration of each preterminal's word probabilities
        (large: flat, so a shared word says little about its preterminal).
    """

    seed: int = 0
    num_roots: int = 9
    num_levels: int = 4
    nonterminals_per_level: int = 10
    rules_per_nonterminal: int = 20
    words_per_preterminal: int = 100
    vocab_size: int = 200
    emission_prob: float = 0.1
    concentration: float = 1.0
    word_concentration: float = 1.0

    @property
    def num_nonterminals(self) -> int:
        """The start symbol and ``num_levels`` levels of ``nonterminals_per_level``."""
        return 1 + self.num_levels * self.nonterminals_per_level

    @property
    def max_sentence_length(self) -> int:
        """Longest sentence the grammar can generate, ``2 ** num_levels``."""
        return 2**self.num_levels

    def check(self) -> None:
        """Raises ValueError naming the first field out of range."""
        for name, minimum in (
            ("num_roots", 2),
            ("num_levels", 2),
            ("nonterminals_per_level", 1),
            ("rules_per_nonterminal", 1),
            ("words_per_preterminal", 1),
            ("vocab_size", 1),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < minimum:
                why = " (task a asks which root a sentence came from)" if name == "num_roots" else ""
                raise ValueError(f"spec.{name}: expected an integer >= {minimum}{why}, got {value!r}")
        n = self.nonterminals_per_level
        if self.num_roots > n * n:
            raise ValueError(
                f"spec.num_roots: {self.num_roots} roots need as many distinct pairs of level-1 "
                f"symbols; expected at most nonterminals_per_level ** 2 = {n * n}"
            )
        if 2 * self.num_roots < n:
            raise ValueError(
                f"spec.num_roots: {self.num_roots} root pairs cannot reach all {n} level-1 "
                f"symbols; expected 2 * num_roots >= nonterminals_per_level"
            )
        if 2 * n * self.rules_per_nonterminal < n:
            raise ValueError(
                f"spec.rules_per_nonterminal: {self.rules_per_nonterminal} rules of {n} symbols "
                f"cannot reach the {n} symbols of the next level"
            )
        if self.words_per_preterminal > self.vocab_size:
            raise ValueError(
                f"spec.words_per_preterminal: expected at most vocab_size={self.vocab_size}, got "
                f"{self.words_per_preterminal}"
            )
        if not 0 <= self.emission_prob < 1:
            raise ValueError(
                f"spec.emission_prob: expected a value in [0, 1), got {self.emission_prob}"
            )
        for name in ("concentration", "word_concentration"):
            if not getattr(self, name) > 0:
                raise ValueError(f"spec.{name}: expected a positive value, got {getattr(self, name)}")


def _covering_pairs(
    rng: np.random.Generator, num_pairs: int, kids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``num_pairs`` random (left, right) pairs of ``kids`` in which every kid appears."""
    slots = rng.choice(kids, size=2 * num_pairs)
    slots[rng.choice(slots.size, size=kids.size, replace=False)] = rng.permutation(kids)
    return slots[0::2], slots[1::2]


def rooted_grammar(spec: RootedGrammarSpec = RootedGrammarSpec()) -> Grammar:
    """Draws a seeded grammar of the family (see the module docstring).

    Args:
      spec: sizes and seed.

    Returns:
      The validated grammar: ``spec.num_nonterminals`` non-terminals, ``spec.vocab_size`` words,
      and the start symbol's ``spec.num_roots`` binary rules (the roots, :func:`root_pairs`).

    Raises:
      ValueError: naming the field of ``spec`` that is out of range.
    """
    spec.check()
    rng = np.random.default_rng(spec.seed)
    n, levels = spec.nonterminals_per_level, spec.num_levels
    level = [1 + depth * n + np.arange(n) for depth in range(levels)]
    binary = np.zeros((spec.num_nonterminals,) * 3)
    emit = np.zeros((spec.num_nonterminals, spec.vocab_size))
    for _ in range(_ROOT_ATTEMPTS):
        left, right = _covering_pairs(rng, spec.num_roots, level[0])
        if len(set(zip(left.tolist(), right.tolist(), strict=True))) == spec.num_roots:
            break
    else:
        raise ValueError(
            f"spec.num_roots: found no {spec.num_roots} distinct root pairs covering the "
            f"{n} level-1 symbols in {_ROOT_ATTEMPTS} draws; expected fewer roots"
        )
    binary[0, left, right] = rng.dirichlet(np.full(spec.num_roots, spec.concentration))
    r = spec.rules_per_nonterminal
    for parents, kids in zip(level[:-1], level[1:], strict=True):
        left, right = _covering_pairs(rng, n * r, kids)
        weights = rng.dirichlet(np.full(r, spec.concentration), size=n)
        np.add.at(binary, (np.repeat(parents, r), left, right), (1 - spec.emission_prob) * weights.ravel())
        if spec.emission_prob > 0:
            emit[parents, rng.choice(spec.vocab_size, size=n)] = spec.emission_prob
    for symbol in level[-1]:
        words = rng.choice(spec.vocab_size, size=spec.words_per_preterminal, replace=False)
        emit[symbol, words] = rng.dirichlet(np.full(words.size, spec.word_concentration))
    return make_grammar(binary, emit, start=0)


def root_pairs(grammar: Grammar) -> np.ndarray:
    """The roots of a grammar: the start symbol's binary rules, in row-major order.

    Args:
      grammar: a grammar (of :func:`rooted_grammar`, or any other: its start symbol's rules).

    Returns:
      ``[K, 2]`` int array: root ``k`` rewrites to the non-terminals ``(B_k, C_k)``.
    """
    return np.argwhere(grammar.binary[grammar.start] > 0)
