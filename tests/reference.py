"""Independent NumPy references, written from the paper's equations."""

from __future__ import annotations

import fractions
import math

import numpy as np


def stable_topk_mask(flat_scores: np.ndarray, k: int) -> np.ndarray:
  """Brute force: first k of a stable descending argsort, NaN last, -0 == +0."""
  s = np.asarray(flat_scores, np.float64)
  # Sort key: NaN -> -inf-minus (lowest), -0 -> +0 by value comparison.
  nan = np.isnan(s)
  order = np.lexsort((np.arange(s.size), -np.where(nan, 0, s), nan))
  mask = np.zeros(s.size, bool)
  mask[order[:k]] = True
  return mask


def stable_order(flat_scores: np.ndarray) -> np.ndarray:
  """Indices in descending score order, NaN last, the earlier first on ties."""
  s = np.asarray(flat_scores, np.float64)
  nan = np.isnan(s)
  return np.lexsort((np.arange(s.size), -np.where(nan, 0, s), nan))


def min_kept_selection(scores, sizes, min_kept, *, q=None, fits=None):
  """Brute force of a group selection with a floor per set, from its definition.

  Every set first keeps its ``min_kept`` best groups (stable order within the
  set); the other groups follow in the global stable order: the first
  ``q - (groups already kept)`` of them (budget in groups), or, for a cost
  budget, each while ``fits(kept)`` holds, stopping at the first that does not.
  A set is *held* when the same budget without the floor (top ``q``, or the
  longest prefix of the global order that fits) keeps fewer than its
  ``min_kept``. Returns (kept, held).
  """
  scores = np.asarray(scores, np.float64)
  offsets = np.cumsum([0] + list(sizes))
  kept = np.zeros(scores.size, bool)
  for a, b, m in zip(offsets, offsets[1:], min_kept):
    kept[a:b] = stable_topk_mask(scores[a:b], m)
  rest = [i for i in stable_order(scores) if not kept[i]]
  plain = np.zeros(scores.size, bool)
  if q is not None:
    kept[rest[:max(q - int(kept.sum()), 0)]] = True
    plain = stable_topk_mask(scores, q)
  else:
    for i in rest:
      trial = kept.copy()
      trial[i] = True
      if not fits(trial):
        break
      kept = trial
    for i in stable_order(scores):
      trial = plain.copy()
      trial[i] = True
      if not fits(trial):
        break
      plain = trial
  held = np.array([plain[a:b].sum() < m for a, b, m in zip(offsets, offsets[1:], min_kept)])
  return kept, held


def rounded_selection(scores, sizes, min_kept, multiple_of, *, q=None, fits=None):
  """Brute force of a group selection whose sets keep multiples of their groups.

  From the definition: the number of groups a set keeps when the ranking reaches
  ``c`` of them is ``m * floor(c / m)`` (``m``: its ``multiple_of``), or its size
  when ``c`` is its size; each set keeps that many of its best (stable order
  within the set). Every set first holds its ``min_kept`` rounded up to a
  multiple (at most its size); the other groups follow in the global stable
  order, each taken while the kept groups, rounded, fit: their count is at most
  ``q``, or ``fits(rounded kept mask)``. Held sets as in
  :func:`min_kept_selection`, at rounded counts. Returns (kept, held).
  """
  scores = np.asarray(scores, np.float64)
  offsets = np.cumsum([0] + list(sizes))
  spans = list(zip(offsets, offsets[1:]))

  def rounded(mask):
    out = np.zeros_like(mask)
    for (a, b), m in zip(spans, multiple_of):
      c = int(mask[a:b].sum())
      c = b - a if c == b - a else c // m * m
      out[a:b] = stable_topk_mask(scores[a:b], c)
    return out

  ok = (lambda mask: rounded(mask).sum() <= q) if q is not None else (
      lambda mask: fits(rounded(mask)))
  kept = np.zeros(scores.size, bool)
  for (a, b), least, m in zip(spans, min_kept, multiple_of):
    kept[a:b] = stable_topk_mask(scores[a:b], min(b - a, -(-least // m) * m))
  plain = np.zeros(scores.size, bool)
  for mask in (kept, plain):  # with the floors, and the budget alone (for held)
    for i in stable_order(scores):
      if mask[i]:
        continue
      trial = mask.copy()
      trial[i] = True
      if not ok(trial):
        break
      mask[i] = True
  held = np.array([rounded(plain)[a:b].sum() < least
                   for (a, b), least in zip(spans, min_kept)])
  return rounded(kept), held


# Scores closer than this (relative) at the selection's threshold may rank either way in
# float32 after some steps: 1/300 random problems of tests/test_recipe.py met one at 7e-7.
FLOAT32_TIE_RTOL = 1e-5


def gsm_reference(w0, eligible, grad_fn, lr_fn, keep_ratio, beta, eta, nesterov, steps, *,
                  passive_weight_decay=lambda t: 0.0, ema=0.0, importance="taylor",
                  tie_rtol=0.0):
  """Global Sparse Momentum SGD in float64, straight from Ding et al. (2019).

    T = |g * W|, B = 1 on the global top-Q of T over eligible weights
    d = B * g + eta * W                (eligible weights; others: d = g)
    Z = beta * Z + d
    W = W - lr * Z                     (Nesterov: W = W - lr * (beta * Z + d))

  and the two extensions of gsm_optax.gsm, both off by default:

    d = B * g + eta * W + eta_p(t) * (1 - B) * W      (passive_weight_decay = eta_p)
    S = ema * S + (1 - ema) * T, B from the top-Q of S  (S starts at 0)

  and ``importance="magnitude"``: T = |W| (the recommended recipe's score).

  ``keep_ratio`` is a float (Q = floor(keep_ratio * n)) or a function ``t -> Q``.
  Yields the list of parameter arrays and the mask B after every step.

  ``tie_rtol`` > 0 ends the trajectory before a step whose selection is a near-tie: the
  Q-th and (Q+1)-th largest scores closer than ``tie_rtol`` of the Q-th. There a float32
  run, whose scores differ from these in the last bits, may keep the other weight, and
  the two trajectories part without either being wrong.
  """
  w = [np.asarray(x, np.float64).copy() for x in w0]
  z = [np.zeros_like(x) for x in w]
  n = sum(x.size for x, e in zip(w, eligible) if e)
  s_avg = np.zeros(n)
  for t in range(steps):
    q = keep_ratio(t) if callable(keep_ratio) else int(np.floor(keep_ratio * n))
    g = grad_fn(t, w)
    scores = np.concatenate([np.abs(wi if importance == "magnitude" else gi * wi).ravel()
                             for gi, wi, e in zip(g, w, eligible) if e])
    s_avg = ema * s_avg + (1 - ema) * scores
    if tie_rtol > 0 and q < n:
      kth, next_ = -np.partition(-s_avg, (q - 1, q))[q - 1:q + 1]
      if kth - next_ <= tie_rtol * kth:
        return
    b = stable_topk_mask(s_avg, q)
    offset = 0
    for i, e in enumerate(eligible):
      if e:
        bi = b[offset:offset + w[i].size].reshape(w[i].shape)
        offset += w[i].size
        d = bi * g[i] + eta * w[i] + passive_weight_decay(t) * (1 - bi) * w[i]
      else:
        d = g[i]
      z[i] = beta * z[i] + d
      step = beta * z[i] + d if nesterov else z[i]
      w[i] = w[i] - lr_fn(t) * step
    yield [x.copy() for x in w], b


def traced_keep_count(ratio: float, n: int) -> int:
  """Q for a float32 (traced) ratio, from gsm_optax.keep_count's documented contract.

  Q = floor(r * n), r the float32 value of the ratio, except that a product short of an
  integer by at most 2**-20 of itself counts as that integer: that is floor(r * n * (1 +
  2**-20)), computed here exactly with fractions (no float32 arithmetic); clipped to [1, n],
  and n for a NaN ratio.
  """
  r = np.float32(ratio)
  if np.isnan(r):
    return n
  q = math.floor(fractions.Fraction(float(r)) * n * (1 + fractions.Fraction(1, 2**20)))
  return int(min(max(q, 1), n))


def group_index(shape, axis: int, size: int) -> np.ndarray:
  """For every entry of an array of ``shape``, its group: its index along ``axis``, mod ``size``."""
  idx = np.arange(shape[axis]) % size
  view = [1] * len(shape)
  view[axis] = shape[axis]
  return np.broadcast_to(idx.reshape(view), shape)


def group_sums(values, spec):
  """Per group set of ``spec`` (a list of (size, [(leaf, axis), ...])), the sums of ``values``."""
  out = []
  for size, members in spec:
    total = np.zeros(size)
    for leaf, axis in members:
      v = np.asarray(values[leaf], np.float64)
      np.add.at(total, group_index(v.shape, axis, size).ravel(), v.ravel())
    out.append(total)
  return out


def structured_gsm_reference(w0, spec, grad_fn, lr, q, beta, eta, steps, *,
                             passive_weight_decay=0.0, ema=0.0, min_kept=None,
                             importance="group_taylor", normalized=False, uniform=None):
  """Structured GSM in float64, from the equations with groups in place of weights.

    T_j = |sum over the entries i of group j of g_i * W_i|
    S_j = ema * S_j + (1 - ema) * sum_i g_i * W_i, T_j = |S_j|   (ema > 0; S starts at 0)
    importance="group_rms": T_j = sqrt(sum_i W_i**2 / n_j) over the n_j entries of group j
    normalized: each set's T over their root mean square, sqrt(mean over the set of T**2)
    uniform (a function of the step giving the keep ratio r_t): every set keeps its best
          max(floor(r_t * size), min_kept) groups by T instead (r_t * size in float32)
    B_i = 1 when the group of entry i is kept: each set's min_kept best groups by T (1 by
          default), then the others in the stable order of T up to Q groups in all (Q: an int,
          or a function of the step)
    d = B * g + eta * W + passive_weight_decay * (1 - B) * W   (members of a group; others: d = g)
    Z = beta * Z + d, W = W - lr * Z

  Yields the parameters and the group masks after every step.
  """
  w = [np.asarray(x, np.float64).copy() for x in w0]
  z = [np.zeros_like(x) for x in w]
  s_avg = [np.zeros(size) for size, _ in spec]
  counts = group_sums([np.ones_like(x) for x in w], spec)
  for t in range(steps):
    g = grad_fn(t, w)
    if importance == "group_rms":
      scores = [np.sqrt(s / n) for s, n in zip(group_sums([x**2 for x in w], spec), counts)]
    else:
      sums = group_sums([gi * wi for gi, wi in zip(g, w)], spec)
      s_avg = [ema * a + (1 - ema) * s for a, s in zip(s_avg, sums)]
      scores = [np.abs(a) for a in s_avg]
    if normalized:
      scores = [s / np.sqrt(np.mean(s**2)) for s in scores]
    if uniform is not None:
      least = min_kept or [1] * len(spec)
      keep = np.concatenate([
          stable_topk_mask(sc, max(int(np.floor(np.float32(uniform(t)) * np.float32(size)
                                                + np.float32(1e-6))), m))
          for sc, (size, _), m in zip(scores, spec, least)])
    else:
      keep, _ = min_kept_selection(np.concatenate(scores), [size for size, _ in spec],
                                   min_kept or [1] * len(spec), q=q(t) if callable(q) else q)
    b = [None] * len(w)
    offset = 0
    for size, members in spec:
      kept = keep[offset:offset + size]
      offset += size
      for leaf, axis in members:
        b[leaf] = kept[group_index(w[leaf].shape, axis, size)]
    for i in range(len(w)):
      if b[i] is None:
        d = g[i]
      else:
        d = b[i] * g[i] + eta * w[i] + passive_weight_decay * (1 - b[i]) * w[i]
      z[i] = beta * z[i] + d
      w[i] = w[i] - lr * z[i]
    yield [x.copy() for x in w], keep
