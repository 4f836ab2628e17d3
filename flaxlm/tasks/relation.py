"""Relation classification: a text with two entity spans -> the relation between them.

Sequence classification over the text with the entities marked in it (Baldini Soares et al.
2019's entity markers): '[E1] head [/E1]' and '[E2] tail [/E2]'. The spans come from the
`head` and `tail` columns as [start, end) character offsets (a list, or 'start,end'), or, with
`columns.head=''`, the text already carries the markers.
"""

from __future__ import annotations

import dataclasses

from flaxlm.data.formats import WHERE, field
from flaxlm.errors import DataError
from flaxlm.tasks.classification import Classification, ClassificationConfig

MARKERS = (("[E1] ", " [/E1]"), ("[E2] ", " [/E2]"))


@dataclasses.dataclass(frozen=True)
class RelationConfig(ClassificationConfig):
  pass


class Relation(Classification):
  name = "relation"
  Config = RelationConfig

  def key(self, record):
    return (self.marked_text(record), None)

  def marked_text(self, record: dict) -> str:
    text = str(field(record, self.columns.text, "text"))
    if not self.columns.head:
      return text
    spans = [_span(record, self.columns.head, "head"), _span(record, self.columns.tail, "tail")]
    for (start, end), _ in zip(spans, MARKERS, strict=True):
      if not 0 <= start < end <= len(text):
        raise DataError(
          f"{record[WHERE]}: entity span [{start}, {end}) is outside the text ({len(text)} chars)"
        )
    (h0, h1), (t0, t1) = spans
    if h0 < t1 and t0 < h1:
      raise DataError(f"{record[WHERE]}: the head and tail spans overlap")
    # Insert from the rightmost position so earlier offsets stay valid.
    inserts = sorted(
      [(h0, MARKERS[0][0]), (h1, MARKERS[0][1]), (t0, MARKERS[1][0]), (t1, MARKERS[1][1])],
      key=lambda x: x[0],
      reverse=True,
    )
    for at, marker in inserts:
      text = text[:at] + marker + text[at:]
    return text


def _span(record: dict, column: str, what: str) -> tuple[int, int]:
  value = field(record, column, what)
  try:
    start, end = value if isinstance(value, list | tuple) else str(value).split(",")
    return int(start), int(end)
  except (TypeError, ValueError):
    raise DataError(
      f"{record[WHERE]}: column {column!r} should be a [start, end) character span, got {value!r}"
    ) from None
