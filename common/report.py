"""Small helpers to write results.json and report.md sections."""

import dataclasses
import json
import math
import os
from typing import Any, Sequence


@dataclasses.dataclass
class Section:
  """One line's part of the main report.

  Attributes:
    line: the results.json key ('cfm', 'papa', ...).
    results: JSON-ready numbers stored under results.json[line].
    markdown: the section's text, with image links relative to the report.
    table: the console table printed at the end of `make run`.
  """
  line: str
  results: dict
  markdown: str
  table: str


def fmt(value: Any, digits: int = 3) -> str:
  if isinstance(value, float):
    if math.isnan(value):
      return 'n/a'
    return f'{value:.{digits}g}' if abs(value) < 1e3 else f'{value:,.0f}'
  return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
  lines = ['| ' + ' | '.join(headers) + ' |',
           '|' + '|'.join('---' for _ in headers) + '|']
  lines += ['| ' + ' | '.join(fmt(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines)


def console_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
  cells = [list(headers)] + [[fmt(v) for v in row] for row in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
  lines = ['  '.join(c.ljust(w) for c, w in zip(row, widths))
           for row in cells]
  lines.insert(1, '  '.join('-' * w for w in widths))
  return '\n'.join(lines)


def write_json(path: str, payload: Any) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
