"""`experiments.core.compile_seconds`: the compile part of a stage's cost."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments.core import compile_seconds


def test_counts_a_new_program_and_not_a_compiled_one():
    # A shape no other test compiles, so the first call traces, lowers and compiles.
    x = jnp.ones((7, 13, 3))

    @jax.jit
    def f(x):
        return jnp.sin(x) @ jnp.ones((3, 5)) + 1.0

    with compile_seconds.CompileSeconds() as first:
        f(x).block_until_ready()
    with compile_seconds.CompileSeconds() as second:
        f(x).block_until_ready()
    assert first.seconds > 0.0
    # The second call reuses the program: nothing traced, lowered or compiled.
    assert second.seconds == 0.0


def test_nested_counters_each_see_what_ran_inside_them():
    @jax.jit
    def g(x):
        return jnp.cos(x).sum()

    with compile_seconds.CompileSeconds() as outer:
        with compile_seconds.CompileSeconds() as inner:
            g(jnp.ones((11, 2))).block_until_ready()
        g(jnp.ones((2, 11))).block_until_ready()
    assert 0.0 < inner.seconds < outer.seconds
