"""The split gradual_magnitude_pruning against the function before the split (temporary).

tests/_masking_before_split.py is gsm_optax/masking.py as it was before the split; both run
the same random problems, and their masks and updates must be bit-identical.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gsm_optax.masking import gradual_magnitude_pruning
from tests import _masking_before_split as before

CASES = {
    "weights": dict(),
    "weights eligible": dict(eligible=lambda p: {"conv": {"kernel": True, "bias": False},
                                                 "dense": {"kernel": False, "bias": False},
                                                 "out": {"kernel": True, "bias": False}}),
    "outputs global": dict(groups="outputs"),
    "outputs uniform": dict(groups="outputs", allocation="uniform"),
    "inputs weights budget": dict(groups="inputs", budget="weights"),
    "outputs weights uniform": dict(groups="outputs", budget="weights", allocation="uniform"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_split_matches_the_function_before_the_split(case):
  seed = np.random.SeedSequence().entropy % (2**32)
  rng = np.random.default_rng(seed)
  shapes = {"conv": {"kernel": (3, 3, 2, 5), "bias": (5,)},
            "dense": {"kernel": (20, 7), "bias": (7,)},
            "out": {"kernel": (7, 4), "bias": (4,)}}
  leaf = lambda s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  params = jax.tree.map(leaf, shapes, is_leaf=lambda x: isinstance(x, tuple))
  kwargs = dict(begin_step=1, end_step=9, update_every=3, initial_keep_ratio=0.9,
                **CASES[case])
  new = gradual_magnitude_pruning(optax.sgd(0.1, momentum=0.9), 0.3, **kwargs)
  old = before.gradual_magnitude_pruning(optax.sgd(0.1, momentum=0.9), 0.3, **kwargs)
  s_new, s_old = new.init(params), old.init(params)
  p_new = p_old = params
  for t in range(12):
    g = jax.tree.map(leaf, shapes, is_leaf=lambda x: isinstance(x, tuple))
    u_new, s_new = jax.jit(new.update)(g, s_new, p_new)
    u_old, s_old = jax.jit(old.update)(g, s_old, p_old)
    for a, b in zip(jax.tree.leaves(u_new), jax.tree.leaves(u_old)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{seed} {t}")
    for a, b in zip(jax.tree.leaves(s_new.mask), jax.tree.leaves(s_old.mask)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{seed} {t}")
    p_new, p_old = optax.apply_updates(p_new, u_new), optax.apply_updates(p_old, u_old)
