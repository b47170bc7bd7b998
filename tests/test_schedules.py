"""The authors' LR schedule and the weight-decay shrink estimates, against plain references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gsm_optax.schedules import (
    decay_shrink_factor,
    shrink_warning,
    simulate_decay_shrink,
    warmup_piecewise_schedule,
)

STEPS_PER_EPOCH = 234  # LeNet-5 on MNIST, batch 256


def _reference_lr(t, peak, warmup, boundaries, factor):
  """Plain Python, one step at a time."""
  lr = peak * t / warmup if t < warmup else peak
  for b in boundaries:
    if t >= b:
      lr *= factor
  return lr


def _reference_shrink(rates, m, eta, nesterov=False):
  """The recurrence itself, one step at a time, in Python floats (float64)."""
  w, z = 1.0, 0.0
  for lr in rates:
    z = m * z + eta * w
    w = w - lr * ((m * z + eta * w) if nesterov else z)
  return w


def _lenet_schedule():
  s = STEPS_PER_EPOCH
  return warmup_piecewise_schedule(
      1e-2, warmup_steps=5 * s, boundaries=[160 * s, 200 * s, 240 * s], factor=0.1
  ), 280 * s


@pytest.mark.parametrize(
    "peak, warmup, boundaries, factor",
    [(0.1, 50, [300, 500, 700], 0.1), (1e-2, 0, [10, 11], 0.5), (3.0, 7, [], 0.1),
     (0.05, 100, [40, 400], 0.2)],  # a boundary inside the warm-up also scales it
)
def test_warmup_piecewise_schedule_matches_python_reference(peak, warmup, boundaries, factor):
  lr = warmup_piecewise_schedule(peak, warmup_steps=warmup, boundaries=boundaries, factor=factor)
  steps = np.arange(1000)
  expected = np.array([_reference_lr(t, peak, warmup, boundaries, factor) for t in steps])
  np.testing.assert_allclose(np.asarray(lr(steps)), expected, rtol=2e-7, atol=0)
  jitted = jax.jit(lr)
  for t in [0, 1, warmup - 1, warmup, warmup + 1, *boundaries, *(b - 1 for b in boundaries), 999]:
    t = max(t, 0)
    np.testing.assert_allclose(float(jitted(np.int32(t))), expected[t], rtol=2e-7)
  assert float(lr(0)) == (0.0 if warmup else float(np.float32(peak)))


def test_warmup_piecewise_schedule_inside_an_optimizer():
  lr = warmup_piecewise_schedule(0.1, warmup_steps=4, boundaries=[6], factor=0.1)
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=lr)
  params = np.zeros(2, np.float32)
  state = tx.init(params)
  seen = []
  for _ in range(8):
    _, state = tx.update(np.ones(2, np.float32), state, params)
    seen.append(float(state.hyperparams["learning_rate"]))
  np.testing.assert_allclose(seen, [0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(peak_value=0.0), "peak_value"), (dict(peak_value=float("nan")), "peak_value"),
     (dict(warmup_steps=-1), "warmup_steps"), (dict(warmup_steps=2.5), "warmup_steps"),
     (dict(boundaries=[5, 3]), "strictly increasing"), (dict(boundaries=[4, 4]), "increasing"),
     (dict(boundaries=[-1, 3]), r"boundaries\[0\]"), (dict(factor=0.0), "factor"),
     (dict(factor=-0.1), "factor")],
)
def test_warmup_piecewise_schedule_rejects_bad_arguments(kwargs, match):
  args = dict(peak_value=0.1, warmup_steps=10, boundaries=[20, 30], factor=0.1) | kwargs
  peak = args.pop("peak_value")
  with pytest.raises((ValueError, TypeError), match=match):
    warmup_piecewise_schedule(peak, **args)


def test_simulation_matches_the_step_by_step_recurrence(rng):
  # A rough schedule with random rates: nothing slow-varying to hide behind.
  # float32 values, so that the schedule (float32 under JAX) returns them exactly.
  rates = rng.uniform(0, 0.5, 3001).astype(np.float32)
  table = jnp.asarray(rates)
  schedule = lambda t: table[t]
  rates = rates.astype(np.float64)
  for nesterov in (False, True):
    m, eta = float(rng.uniform(0.5, 0.99)), float(rng.uniform(1e-4, 1e-2))
    got = simulate_decay_shrink(schedule, 3001, momentum=m, weight_decay=eta, nesterov=nesterov)
    expected = _reference_shrink(rates, m, eta, nesterov)
    assert math.isclose(got, expected, rel_tol=1e-9), (nesterov, got, expected)


def test_simulation_constant_rate_matches_matrix_power():
  lr, m, eta, steps = 0.05, 0.9, 1e-3, 200_001  # more than 3 chunks, odd length
  got = simulate_decay_shrink(lr, steps, momentum=m, weight_decay=eta)
  mat = np.array([[1 - lr * eta, -lr * m], [eta, m]])
  # M^T = V diag(lambda^T) V^-1: exact, and no underflow of the intermediate powers.
  vals, vecs = np.linalg.eig(mat)
  expected = float((vecs @ np.diag(vals**steps) @ np.linalg.inv(vecs))[0, 0].real)
  assert math.isclose(got, expected, rel_tol=1e-6), (got, expected)


def _radius(lr, m, eta, nesterov):
  """The spectral radius of one step of the update, written from its equations."""
  if nesterov:  # Z' = m Z + eta W; W' = W - lr (m Z' + eta W)
    mat = np.array([[1 - lr * eta * (1 + m), -lr * m * m], [eta, m]])
  else:  # Z' = m Z + eta W; W' = W - lr Z'
    mat = np.array([[1 - lr * eta, -lr * m], [eta, m]])
  return float(np.max(np.abs(np.linalg.eigvals(mat))))


# m = 0.99, lr = 1e-2: critical damping at eta = (1 - sqrt(m))**2 / lr = 2.5e-3.
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("eta", [5e-4, 2e-3, 3e-3, 0.5], ids=["over", "near", "just-under",
                                                             "under"])
def test_envelope_bounds_the_weight_on_both_sides_of_critical_damping(eta, nesterov):
  lr, m, steps = 1e-2, 0.99, 1500
  weights, w, z = [], 1.0, 0.0
  for _ in range(steps):  # the recurrence, one step at a time, in float64
    z = m * z + eta * w
    w = w - lr * ((m * z + eta * w) if nesterov else z)
    weights.append(abs(w))
  envelope = decay_shrink_factor(lr, steps, momentum=m, weight_decay=eta, nesterov=nesterov)
  assert math.isclose(envelope, _radius(lr, m, eta, nesterov) ** steps, rel_tol=1e-9)
  # The weight's largest size over its last 200 steps (more than an oscillation's period) is
  # the envelope within a constant, while the old over-damped estimate
  # exp(-lr eta T / (1 - m)) is hundreds of orders of magnitude too small under-damped.
  recent = max(weights[-200:])
  assert envelope / 30 < recent < envelope * 30, (recent, envelope)
  assert abs(simulate_decay_shrink(lr, steps, momentum=m, weight_decay=eta,
                                   nesterov=nesterov)) <= envelope * 30


def test_envelope_of_a_decay_schedule_multiplies_its_parts():
  """A passive decay from step 700 on: the envelope is the product over the two stretches,
  and the simulation follows the decay's schedule step by step."""
  lr, m, begin, steps = optax.cosine_decay_schedule(1e-2, 2000), 0.99, 700, 2000
  eta = lambda t: jnp.where(t >= begin, 5e-4 + 5e-2, 5e-4)
  whole = decay_shrink_factor(lr, steps, momentum=m, weight_decay=eta, nesterov=True)
  first = decay_shrink_factor(lr, begin, momentum=m, weight_decay=5e-4, nesterov=True)
  second = decay_shrink_factor(lambda t: lr(t + begin), steps - begin, momentum=m,
                               weight_decay=5.05e-2, nesterov=True)
  assert math.isclose(whole, first * second, rel_tol=1e-5)  # the schedule is float32
  rates = np.array([float(lr(t)) for t in range(steps)])
  etas = [5e-4 + (5e-2 if t >= begin else 0.0) for t in range(steps)]
  w, z = 1.0, 0.0
  for r, e in zip(rates, etas):
    z = m * z + e * w
    w = w - r * (m * z + e * w)
  got = simulate_decay_shrink(lr, steps, momentum=m, weight_decay=eta, nesterov=True)
  assert math.isclose(got, w, rel_tol=1e-4)  # the schedule's rates are float32
  assert decay_shrink_factor(lr, 0, momentum=m, weight_decay=eta) == 1.0
  assert simulate_decay_shrink(lr, 0, momentum=m, weight_decay=eta) == 1.0


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize(
    "schedule, steps, m, eta",
    [(optax.cosine_decay_schedule(0.1, 40_000), 40_000, 0.9, 1e-4),
     (warmup_piecewise_schedule(0.05, warmup_steps=500, boundaries=[20_000, 30_000]), 40_000,
      0.95, 2e-4),
     (optax.exponential_decay(0.02, 1000, 0.9), 30_000, 0.99, 5e-5)],
)
def test_closed_form_agrees_with_simulation_for_slow_schedules(schedule, steps, m, eta, nesterov):
  # Valid when lr * eta / (1 - m)**2 (the relative error of the exponent) is small.
  closed = decay_shrink_factor(schedule, steps, momentum=m, weight_decay=eta)
  exact = simulate_decay_shrink(schedule, steps, momentum=m, weight_decay=eta, nesterov=nesterov)
  assert 0 < exact < 1 and 0 < closed < 1
  assert math.isclose(math.log(closed), math.log(exact), rel_tol=0.03), (closed, exact)


def test_lenet_gsm_schedule():
  """The authors' LeNet-5 run: lr 1e-2, 5 warm-up epochs, x0.1 at 160/200/240, 280 epochs."""
  schedule, steps = _lenet_schedule()
  closed = decay_shrink_factor(schedule, steps, momentum=0.99, weight_decay=5e-4)
  exact = simulate_decay_shrink(schedule, steps, momentum=0.99, weight_decay=5e-4)
  nesterov = simulate_decay_shrink(schedule, steps, momentum=0.99, weight_decay=5e-4,
                                   nesterov=True)
  print(f"LeNet GSM schedule, {steps} steps: closed form {closed:.4g}, simulated {exact:.4g},"
        f" simulated with Nesterov {nesterov:.4g}")
  # Here lr * eta / (1 - m)**2 = 0.05: the closed form's exponent is ~5% short.
  assert math.isclose(math.log(closed), math.log(exact), rel_tol=0.08)
  assert math.isclose(math.log(nesterov), math.log(exact), rel_tol=0.02)
  assert shrink_warning(closed) is None and shrink_warning(exact) is None


def test_short_run_warns():
  schedule, _ = _lenet_schedule()
  factor = simulate_decay_shrink(schedule, 20 * STEPS_PER_EPOCH, momentum=0.9, weight_decay=5e-4)
  message = shrink_warning(factor)
  print(message)
  assert message is not None
  assert f"{factor:.3g}" in message and "train longer" in message and "weight_decay" in message
  assert shrink_warning(factor, threshold=min(0.999, factor * 1.01)) is None
  assert shrink_warning(1e-4) is None and shrink_warning(2e-3) is not None
  with pytest.raises(ValueError, match="threshold"):
    shrink_warning(0.5, threshold=0.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(learning_rate=-1.0), "learning_rate"), (dict(num_steps=-3), "num_steps"),
     (dict(num_steps=1.5), "num_steps"), (dict(momentum=1.0), "momentum"),
     (dict(weight_decay=-1e-4), "weight_decay")],
)
def test_decay_functions_reject_bad_arguments(kwargs, match):
  args = dict(learning_rate=0.1, num_steps=100, momentum=0.9, weight_decay=1e-4) | kwargs
  for fn in (decay_shrink_factor, simulate_decay_shrink):
    a = dict(args)
    with pytest.raises((ValueError, TypeError), match=match):
      fn(a.pop("learning_rate"), a.pop("num_steps"), **a)
