"""A user's likely mistakes raise our own error, naming the argument and the call they meant.

Each mistake here used to reach an error from inside JAX or Flax (or a message without the fix).
"""

import re

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import linen as nn

import gsm_optax


class _Mlp(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))


@pytest.fixture(scope="module")
def linen_model():
  model = _Mlp()
  x = jnp.ones((2, 5))
  return model, model.init(jax.random.PRNGKey(0), x), x


def _mlp(params, x):
  return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"]


PARAMS = {"w1": jnp.ones((5, 4)), "b1": jnp.ones(4), "w2": jnp.ones((4, 2))}
SCHEDULE = gsm_optax.cubic_keep_ratio_schedule(0.1, begin_step=0, end_step=10)


# --- a schedule where a number is needed ---------------------------------------------------------

@pytest.mark.parametrize("fn", ["prune", "prune_mask", "prune_readiness"])
def test_a_keep_ratio_schedule_given_to_a_one_time_prune_says_to_pass_its_final_value(fn):
  with pytest.raises(TypeError, match=rf"{fn} needs keep_ratio as a float in \(0, 1\], not a"
                     rf" schedule.*{fn}\(params, schedule\(last_step\)\)"
                     r".*got keep_ratio=<function"):
    getattr(gsm_optax, fn)(PARAMS, SCHEDULE)


def test_a_schedule_given_to_gradual_magnitude_pruning_says_it_builds_its_own():
  for name in ("final_keep_ratio", "initial_keep_ratio"):
    kwargs = {"final_keep_ratio": 0.1, name: SCHEDULE}
    with pytest.raises(TypeError, match=rf"{name} must be a float in \(0, 1\], not a schedule:"
                       r" gradual_magnitude_pruning builds its cubic schedule.*"
                       r"gsm\(learning_rate, keep_ratio=schedule\)"):
      gsm_optax.gradual_magnitude_pruning(optax.sgd(0.1), begin_step=0, end_step=5,
                                          update_every=1, **kwargs)


@pytest.mark.parametrize("factory, name", [
    ("gsm", "momentum"), ("gsm", "weight_decay"), ("gsm", "importance_ema"),
    ("keep_top_gradients", "importance_ema")])
def test_a_schedule_for_a_number_of_the_optimizer_says_how_to_schedule_it(factory, name):
  with pytest.raises(TypeError, match=rf"{name} must be .*not a schedule.*"
                     rf"optax.inject_hyperparams\({factory}\)\(\.\.\., {name}=schedule\)"):
    if factory == "gsm":
      gsm_optax.gsm(0.1, 0.5, **{name: optax.constant_schedule(0.5)})
    else:
      gsm_optax.keep_top_gradients(0.5, **{name: optax.constant_schedule(0.5)})


def test_the_suggested_inject_hyperparams_call_works():
  """The fix the message above proposes runs, and the momentum follows the schedule."""
  momentum = optax.linear_schedule(0.5, 0.9, 4)
  tx = optax.inject_hyperparams(gsm_optax.gsm)(learning_rate=0.1, keep_ratio=0.5,
                                                momentum=momentum)
  params = {"w": jnp.ones((3, 3))}
  state = tx.init(params)
  for _ in range(4):
    _, state = tx.update(params, state, params)
  assert float(state.hyperparams["momentum"]) == pytest.approx(float(momentum(3)))  # last update


# --- a linen module where its apply is needed, params where variables are (and the reverse) -----

def test_couple_given_the_linen_module_asks_for_its_apply(linen_model):
  model, variables, x = linen_model
  with pytest.raises(TypeError, match=r"couple needs the linen module's apply.*"
                     r"couple\(model\.apply, variables, x\).*got model=_Mlp\(\.\.\.\)"):
    gsm_optax.couple(model, variables, x)


@pytest.mark.parametrize("wrapped", [False, True])
def test_couple_given_params_for_linen_variables_says_wrap_them(linen_model, wrapped):
  model, variables, x = linen_model
  apply = (lambda v, x: model.apply(v, x)) if wrapped else model.apply
  with pytest.raises(ValueError, match=re.escape(
      "did you mean couple(model.apply, {'params': params}, x)? Got variables with keys"
      " ['Dense_0', 'Dense_1']")):
    gsm_optax.couple(apply, variables["params"], x)


def test_narrow_given_params_for_linen_variables_says_wrap_them(linen_model):
  model, variables, x = linen_model
  coupling = gsm_optax.couple(model.apply, variables, x)
  with pytest.raises(ValueError, match=re.escape(
      "did you mean narrow(coupling, {**variables, 'params': pruned_params})?")):
    gsm_optax.narrow(coupling, variables["params"])
  gsm_optax.narrow(coupling, {**variables, "params": variables["params"]})  # the suggested call


def test_narrow_given_variables_for_params_says_take_the_params():
  coupling = gsm_optax.couple(_mlp, PARAMS, jnp.ones((1, 5)))
  with pytest.raises(ValueError, match=re.escape(
      "did you mean narrow(coupling, variables['params'])?")):
    gsm_optax.narrow(coupling, {"params": PARAMS})


def test_narrow_of_another_structure_gets_no_wrong_hint():
  coupling = gsm_optax.couple(_mlp, PARAMS, jnp.ones((1, 5)))
  with pytest.raises(ValueError, match=r"not that of the variables coupled") as info:
    gsm_optax.narrow(coupling, {"w1": PARAMS["w1"], "w2": PARAMS["w2"]})
  assert "did you mean" not in str(info.value)


@pytest.mark.parametrize("call", ["prune", "prune_mask", "prune_readiness", "gsm.init",
                                  "gradual_magnitude_pruning.init"])
def test_groups_given_linen_variables_say_pass_the_params(linen_model, call):
  model, variables, x = linen_model
  groups = gsm_optax.couple(model.apply, variables, x).groups
  with pytest.raises(ValueError, match=re.escape(
      "groups name paths inside their params, so pass variables['params']")):
    if call == "gsm.init":
      gsm_optax.gsm(0.1, 0.5, groups=groups).init(variables)
    elif call == "gradual_magnitude_pruning.init":
      gsm_optax.gradual_magnitude_pruning(optax.sgd(0.1), 0.5, begin_step=0, end_step=2,
                                          update_every=1, groups=groups).init(variables)
    else:
      getattr(gsm_optax, call)(variables, 0.5, groups=groups)


@pytest.mark.parametrize("make", [lambda: gsm_optax.gsm(0.1, 0.5),
                                  lambda: gsm_optax.keep_top_gradients(0.5)])
def test_update_given_linen_variables_for_params_says_pass_the_params(linen_model, make):
  _, variables, _ = linen_model
  tx = make()
  state = tx.init(variables["params"])
  with pytest.raises(ValueError, match=re.escape(
      "pass their params, update(updates, state, variables['params'])")):
    tx.update(variables["params"], state, variables)
