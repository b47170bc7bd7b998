"""The python code blocks of a Markdown file, as the docs tests and scripts run them.

A block runs unless one of the HTML comment lines just above its fence is
``<!-- fragment: REASON -->``: a block that uses names the reader supplies (their params, their
loss) says so and why.
"""

from __future__ import annotations

import pathlib
import re
from typing import NamedTuple

_FENCE = re.compile(r"^```(\w*)\s*$")
_FRAGMENT = re.compile(r"^<!-- fragment: (.+?) -->\s*$")


class Block(NamedTuple):
  line: int  # of the opening fence, 1-based
  code: str
  fragment: str | None  # the reason, for a block that does not run


def python_blocks(path: str | pathlib.Path) -> list[Block]:
  """Every fenced ``python`` block of the Markdown file at ``path``, in order."""
  lines = pathlib.Path(path).read_text().splitlines()
  blocks, i = [], 0
  while i < len(lines):
    fence = _FENCE.match(lines[i])
    if fence is None:
      i += 1
      continue
    start, language = i, fence.group(1)
    i += 1
    while i < len(lines) and not _FENCE.match(lines[i]):
      i += 1
    if language == "python":
      reason, j = None, start - 1
      while j >= 0 and lines[j].startswith("<!--"):
        marker = _FRAGMENT.match(lines[j])
        reason = marker.group(1) if marker else reason
        j -= 1
      blocks.append(Block(start + 1, "\n".join(lines[start + 1:i]) + "\n", reason))
    i += 1
  return blocks
