"""The one rule every batch is sized by (`diffjax.compiled_memory`): XLA's plan of a real
compiled CPU program, a donated argument counted once, two programs in turn, and the sample
preflight's one-line refusal."""

import jax
import jax.numpy as jnp
import pytest

from diffjax.commands.preflight import check_program_memory
from diffjax.compiled_memory import memory_parts, needed_bytes, programs_in_turn
from diffjax.spec import ConfigError


def _compiled(donate: bool):
    f = jax.jit(lambda x, y: (x * 2, y.sum()), donate_argnums=(0,) if donate else ())
    return f.lower(jnp.ones((256, 256)), jnp.ones((64,))).compile()


def test_a_donated_argument_is_counted_once():
    kept, donated = memory_parts(_compiled(False)), memory_parts(_compiled(True))
    matrix = 256 * 256 * 4
    assert kept["argument_bytes"] >= matrix + 64 * 4 and kept["output_bytes"] >= matrix
    assert kept["alias_bytes"] == 0 and donated["alias_bytes"] == matrix
    # the output reuses the donated input's buffer: the program needs one matrix less
    assert needed_bytes(kept) - needed_bytes(donated) == matrix
    assert needed_bytes({}) == 0


def test_programs_in_turn_add_what_stays_and_keep_the_larger_temporaries():
    a = dict(argument_bytes=10, output_bytes=2, alias_bytes=1, temp_bytes=7, code_bytes=3)
    b = dict(argument_bytes=20, output_bytes=4, alias_bytes=0, temp_bytes=5, code_bytes=1)
    both = programs_in_turn(a, b)
    assert both == dict(argument_bytes=30, output_bytes=6, alias_bytes=1, temp_bytes=7,
                        code_bytes=4)
    assert needed_bytes(both) == 30 + 6 - 1 + 7 + 4
    assert programs_in_turn(a, {}) == {}


def test_preflight_refuses_a_program_that_does_not_fit_in_one_line():
    parts = memory_parts(_compiled(False))
    check_program_memory(parts, limit=needed_bytes(parts))          # exactly fits
    check_program_memory({}, limit=1)                                # no plan: nothing to check
    with pytest.raises(ConfigError, match="needs .* per device .* a device has") as e:
        check_program_memory(parts, limit=needed_bytes(parts) - 1)
    assert "\n" not in str(e.value)
