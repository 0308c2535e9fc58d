"""JSON on the request path: orjson's speed, the standard library's answers.

- `loads(data, finite=False)`: orjson reads UTF-8 JSON to the very values `json.loads` gives,
  except integers past 64 bits (it reads them as floats); so text with a run of 19 digits,
  and whatever orjson refuses (NaN and Infinity, numbers too large for a float, other
  encodings, a BOM, lone surrogates, nesting past its limit, invalid JSON), goes to `json.loads`,
  which answers as it always did. `finite=True` refuses NaN, Infinity and numbers too large for a
  float with NonFiniteNumber (orjson never reads one).
- `dumps(value)`: compact JSON bytes, `default=str` for other types, as
  `json.dumps(value, separators=(",", ":"), default=str)` writes it except that non-ASCII text is
  written as UTF-8 instead of `\\u` escapes; datetimes and dataclasses go to `str` as there, and
  what orjson cannot write (integers past 64 bits, non-string keys, deep nesting) is written by
  the standard library. Non-finite floats (which no parsed request can hold) come out as null.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

# 19 digits: the shortest integer that may not fit in 64 bits (2**63 = 9223372036854775808).
_LONG_NUMBER = re.compile(rb"\d{19}")
_LONG_NUMBER_TEXT = re.compile(r"\d{19}")
_STR_DEFAULT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class NonFiniteNumber(ValueError):
    """NaN, Infinity or a number too large for a float, in loads(..., finite=True)."""


def _finite(text: str) -> float:
    value = float(text)  # parses NaN, Infinity and -Infinity too (as parse_constant)
    if not math.isfinite(value):
        raise NonFiniteNumber("numbers must be finite")
    return value


def loads(data: bytes | bytearray | memoryview | str, *, finite: bool = False) -> Any:
    """`json.loads(data)`'s value or exception, through orjson when that is the same."""
    if isinstance(data, memoryview):
        data = bytes(data)
    long_number = _LONG_NUMBER_TEXT if isinstance(data, str) else _LONG_NUMBER
    if long_number.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    if finite:
        return json.loads(data, parse_float=_finite, parse_constant=_finite)
    return json.loads(data)


def dumps(value: Any) -> bytes:
    """Compact JSON of value (see the module's docstring)."""
    try:
        return orjson.dumps(value, default=str, option=_STR_DEFAULT)
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"), default=str).encode()
