"""How deeply a JSON body nests, found with a few byte-level passes before it is parsed.

msgspec (like any recursive parser) raises RecursionError on arrays or objects nested about
a thousand deep, and whatever walks the decoded value afterwards would too. A body nested
deeper than `MAX_JSON_DEPTH` is refused before it reaches the parser. OpenAI's own bodies
nest three deep (`{"input": [[1, 2]]}`); 64 leaves room for any client's extra fields.

Brackets inside strings do not count: escaped backslashes and escaped quotes are removed
first, so every quote left opens or closes a string, and a bracket counts only after an
even number of quotes. For valid JSON this is its exact depth; for invalid JSON it is at
least the depth the parser would reach before failing, since both read the same valid
prefix the same way.
"""

from __future__ import annotations

import numpy as np

MAX_JSON_DEPTH = 64

_MARKS = b'"[]{}'
_NOT_MARKS = bytes(c for c in range(256) if c not in _MARKS)
_STEP = np.zeros(256, dtype=np.int8)
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1
_QUOTE = ord('"')
# Bounds the scratch memory of the scan (a few int64 arrays of this many items).
_CHUNK = 1 << 20


def nests_deeper_than(body: bytes, limit: int) -> bool:
    """Whether the arrays and objects in `body` nest more than `limit` deep."""
    marks = body.translate(None, _NOT_MARKS)
    # Fast path: too few brackets, in strings or not, to reach the limit at all.
    if marks.count(b"[") + marks.count(b"{") <= limit:
        return False
    if b"\\" in body:
        marks = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_MARKS)
    codes = np.frombuffer(marks, dtype=np.uint8)
    quotes_before = 0
    depth = 0
    for start in range(0, len(codes), _CHUNK):
        chunk = codes[start : start + _CHUNK]
        quotes = np.cumsum(chunk == _QUOTE, dtype=np.int64) + quotes_before
        steps = np.where(quotes & 1, 0, _STEP[chunk].astype(np.int64))
        levels = np.cumsum(steps) + depth
        if int(levels.max()) > limit:
            return True
        quotes_before, depth = int(quotes[-1]), int(levels[-1])
    return False
