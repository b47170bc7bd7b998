"""How fast `gsm` removes a weight that has left the top-Q, for a passive decay of 10x and 100x.

    python docs/results/passive_weight_decay.py

A weight outside the top-Q receives no gradient, only the decay eta + eta_p, through the
momentum buffer: with momentum 0.99 it is an under-damped oscillator. Its amplitude falls by
about sqrt(momentum) a step whatever the decay, so the step from which it stays below 1% of its
size barely moves; what a larger passive decay changes is how soon it first reaches zero, i.e.
how long the dropped weight still acts on the forward pass at close to its full size. Runs the
real transformation (Nesterov momentum 0.99, lr 1e-2) on one kept and one dropped weight.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gsm_optax

SCHEDULES = {"authors' (weight decay 5e-4)": 5e-4, "sweep's (weight decay 2e-3)": 2e-3}
STEPS = 3000


def trajectory(weight_decay: float, factor: float) -> np.ndarray:
  """The dropped weight (starting at 1) after every step, with zero loss gradients."""
  tx = gsm_optax.gsm(1e-2, 0.5, momentum=0.99, nesterov=True, weight_decay=weight_decay,
                     importance="magnitude", passive_weight_decay=factor * weight_decay)
  params = jnp.array([[10.0, 1.0]])  # the first is kept (top-1 of 2), the second dropped

  def step(carry, _):
    params, state = carry
    updates, state = tx.update(jnp.zeros_like(params), state, params)
    params = optax.apply_updates(params, updates)
    return (params, state), params[0, 1]

  _, dropped = jax.lax.scan(step, (params, tx.init(params)), length=STEPS)
  return np.asarray(dropped)


def main() -> None:
  print("| schedule | passive decay | first reaches 0 (step) | stays below 10% / 1% from step"
        " | mean size over steps 1-250 / 1-1000 |")
  print("|---|---|---|---|---|")
  for name, weight_decay in SCHEDULES.items():
    for factor in (10, 100):
      w = trajectory(weight_decay, factor)
      first_zero = int(np.argmax(w <= 0))
      # The last step at which |w| is at or above a level, plus one.
      envelope = np.maximum.accumulate(np.abs(w)[::-1])[::-1]
      below = [int(np.argmax(envelope < level)) for level in (0.1, 0.01)]
      means = [float(np.abs(w[:n]).mean()) for n in (250, 1000)]
      print(f"| {name} | {factor}x | {first_zero} | {below[0]} / {below[1]}"
            f" | {means[0]:.2f} / {means[1]:.2f} |")


if __name__ == "__main__":
  main()
