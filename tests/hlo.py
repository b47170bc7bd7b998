"""Reading collectives out of compiled HLO text."""

import re

import numpy as np

COLLECTIVES = ("all-gather", "all-to-all", "collective-permute")
DTYPE_BYTES = {"f32": 4, "s32": 4, "u32": 4, "pred": 1, "f16": 2, "bf16": 2, "s8": 1, "u8": 1,
               "f64": 8, "s64": 8, "u64": 8}


def collectives(hlo: str) -> list[tuple[str, str, int]]:
  """``(op, result type, largest result in bytes)`` of each data-moving collective."""
  found = []
  for line in hlo.splitlines():
    for op in COLLECTIVES:
      if re.search(rf"\b{op}(-start)?\(", line):
        lhs = line.split("=", 1)[1].split(op, 1)[0]
        size = 0
        for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", lhs):
          n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
          size = max(size, n * DTYPE_BYTES.get(dtype, 8))
        found.append((op, re.sub(r"\{[\d,]*\}", "", lhs).strip(), size))
  return found


def largest_collective(hlo: str) -> dict:
  """Largest result (bytes) of each data-moving collective in compiled HLO."""
  sizes = {op: 0 for op in COLLECTIVES}
  for op, _, size in collectives(hlo):
    sizes[op] = max(sizes[op], size)
  return sizes
