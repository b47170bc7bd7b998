"""Smoke test of an installed gsm-optax (run by .ci/run from a fresh venv outside the source tree).

Checks that the installed package, not the source tree, is imported; that importing it stays
light; that it ships py.typed; that a jitted gsm step runs; and that couple/narrow export a small
linen model with the same outputs.
"""

import pathlib
import subprocess
import sys

SOURCE = pathlib.Path(sys.argv[1]).resolve()

light = subprocess.run(
    [sys.executable, "-c", "import sys, gsm_optax; print(' '.join(sorted(m for m in sys.modules"
     " if m.split('.')[0] in ('matplotlib', 'sklearn', 'tqdm', 'flax', 'orbax'))))"],
    capture_output=True, text=True, check=True)
assert light.stdout.split() == [], f"importing gsm_optax imported {light.stdout.split()}"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import linen as nn  # noqa: E402

import gsm_optax  # noqa: E402

package = pathlib.Path(gsm_optax.__file__).resolve().parent
assert SOURCE not in package.parents, f"gsm_optax was imported from the source tree: {package}"
assert (package / "py.typed").is_file(), "the installed package has no py.typed"

# A jitted GSM step, then the final prune to exactly Q weights.
params = {"w": jnp.arange(12.0).reshape(3, 4) - 5.0, "b": jnp.zeros(4)}
tx = gsm_optax.recommended_gsm(1e-2, keep_ratio=0.25, anneal_steps=2)
state = tx.init(params)


@jax.jit
def step(params, state):
  grads = jax.grad(lambda p: jnp.sum((jnp.ones(3) @ p["w"] + p["b"]) ** 2))(params)
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


for _ in range(3):
  params, state = step(params, state)
assert int(gsm_optax.selection_stats(state).keep_count) == 3
assert int(jnp.sum(gsm_optax.prune(params, 0.25)["w"] != 0)) == 3


# couple and narrow on a small linen model: the narrow model computes the same outputs.
class Mlp(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(2)(nn.relu(nn.Dense(6)(x)))


model = Mlp()
x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 5)), jnp.float32)
variables = model.init(jax.random.PRNGKey(0), x)
coupling = gsm_optax.couple(model.apply, variables, x)
pruned = gsm_optax.prune(variables["params"], 0.5, groups=coupling.groups)
small = gsm_optax.narrow(coupling, {**variables, "params": pruned})
assert list(small.widths.values()) == [3], small.widths  # half of the 6 hidden units
np.testing.assert_allclose(small.apply(small.variables, x),
                           model.apply({**variables, "params": pruned}, x), rtol=1e-5, atol=1e-6)
print(f"smoke test passed: gsm-optax {gsm_optax.__version__} from {package}")
