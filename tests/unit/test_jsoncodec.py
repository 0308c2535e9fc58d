"""shared.core.jsoncodec: orjson's speed with the standard library's values and errors."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid

import pytest

from shared.core import jsoncodec

SAME_AS_JSON = [
    b'{"kind": "story", "params": {"n": 1, "x": 1.5, "ok": true, "none": null}}',
    b"18446744073709551616",  # past 64 bits: orjson alone would read a float
    b"-9223372036854775809",
    b'{"big": 123456789012345678901234567890}',
    b"[1e308, -0.0, 5e-324, 1.00000000000000000000001]",
    b'"\\ud83d\\ude00 caf\\u00e9"',
    b'"\\ud800"',  # a lone surrogate: orjson refuses, json reads it
    b"\xef\xbb\xbf{}",  # a UTF-8 BOM
    '{"a": "é"}'.encode("utf-16"),
    b'{"a": 1, "a": 2}',
    b"[" * 2000 + b"]" * 2000,
]


@pytest.mark.parametrize("data", SAME_AS_JSON)
def test_loads_gives_what_json_loads_gives(data):
    try:
        expected = json.loads(data)
    except RecursionError:
        with pytest.raises(RecursionError):
            jsoncodec.loads(data)
        return
    got = jsoncodec.loads(data)
    assert got == expected and repr(got) == repr(expected)


@pytest.mark.parametrize("data", [b"{", b'{"a": 01}', b"[1,]", b'"\x01"', b"\xff"])
def test_invalid_json_raises_as_json_loads_does(data):
    with pytest.raises(ValueError):
        json.loads(data)
    with pytest.raises(ValueError):
        jsoncodec.loads(data)


@pytest.mark.parametrize("data", [b"NaN", b"[Infinity]", b'{"a": -Infinity}', b"1e400"])
def test_finite_refuses_what_cannot_be_a_finite_float(data):
    assert repr(jsoncodec.loads(data)) == repr(json.loads(data))  # without finite: as json
    with pytest.raises(jsoncodec.NonFiniteNumber):
        jsoncodec.loads(data, finite=True)


@dataclasses.dataclass
class Point:
    x: int


def test_dumps_writes_what_json_dumps_writes_compact_with_str_default():
    values = [
        {"job": {"id": str(uuid.uuid4()), "cost": 1, "progress": 12.5, "params": {}}},
        {"when": dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC), "id": uuid.uuid4()},
        {"point": Point(1), "day": dt.date(2026, 12, 1)},
        {"big": 2**70, "list": [1, "two", None, True]},
        {1: "a non-string key"},
        {"text": "café \ud800"},  # a lone surrogate: orjson refuses, json escapes it
    ]
    for value in values:
        expected = json.dumps(value, separators=(",", ":"), default=str)
        assert json.loads(jsoncodec.dumps(value)) == json.loads(expected)
    assert jsoncodec.dumps({"a": [1, 2]}) == b'{"a":[1,2]}'
