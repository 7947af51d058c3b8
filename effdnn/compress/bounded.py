"""Reading untrusted bytes without trusting their claims: a cursor that refuses to read past the end,
and JSON whose size and nesting are bounded before it is parsed (no RecursionError, no blow-up)."""
from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from typing import Any

_JSON_TOKENS = re.compile(r'\\.|[\[\]{}"]', re.DOTALL)  # an escape pair, a quote or a bracket


class ByteReader:
    """A cursor over ``data``; ``fail(msg)`` makes the caller's one-line exception, prefixed by ``where``."""

    def __init__(self, data: bytes | memoryview, where: str, error: Callable[[str], Exception]) -> None:
        self.data, self.pos, self.where, self.error = memoryview(data), 0, where, error

    def fail(self, msg: str) -> Exception:
        return self.error(f"{self.where}: {msg}")

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.left():
            raise self.fail(f"truncated: {what} needs {n} bytes at offset {self.pos}, {self.left()} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def sub(self, n: int, what: str, where: str) -> ByteReader:
        """The next ``n`` bytes as a reader of their own."""
        return ByteReader(self.take(n, what), where, self.error)

    def done(self, what: str) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"{self.left()} unexpected bytes at the end of {what}")


def json_depth(text: str) -> int:
    """Deepest bracket nesting of JSON ``text``, brackets inside strings aside (exact up to the first
    syntax error, which is as far as a JSON parser gets)."""
    depth = deepest = 0
    in_str = False
    for m in _JSON_TOKENS.finditer(text):
        c = m.group()
        if c == '"':
            in_str = not in_str
        elif in_str or c[0] == "\\":
            continue
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def bounded_json_object(r: ByteReader, what: str, max_bytes: int, max_depth: int) -> dict[str, Any]:
    """The rest of ``r`` as a UTF-8 JSON object of at most ``max_bytes`` and ``max_depth`` levels."""
    if r.left() > max_bytes:
        raise r.fail(f"{what} of {r.left()} bytes (at most {max_bytes})")
    raw = r.take(r.left(), what)
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise r.fail(f"{what} is not UTF-8") from None
    if json_depth(text) > max_depth:
        raise r.fail(f"{what} nests deeper than {max_depth} levels")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: cannot happen after the depth check; kept as a guard
        raise r.fail(f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise r.fail(f"{what} is not a JSON object")
    return obj
