"""A JSON reader that remembers the line of every value, so errors can point at it.

Python's :mod:`json` gives no positions for parsed values. This reader walks the document
once (using :mod:`json`'s own string scanner for exact string semantics) and returns the
value together with a map from JSON path (a tuple of keys and indices) to line number.

Internal: not part of the plugin API, may change in any release (docs/plugins.md, "The public API").
"""

from __future__ import annotations

import bisect
import json
import re
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

Path = tuple[str | int, ...]

_WS = re.compile(r"[ \t\n\r]*")
#: Numbers written with more characters than this are refused (Python's int-string limit is 4300).
MAX_NUMBER_CHARS = 100
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?")


#: Deeper nesting is refused: no config or row needs it, and Python's recursion has a limit.
MAX_DEPTH = 100


def lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate in ``text`` (JSON's ``"\\ud800"`` escape makes one;
    it is no Unicode character and cannot be written as UTF-8), or ``None``."""
    match = _SURROGATE.search(text)
    return match.start() if match else None


_SURROGATE = re.compile("[\ud800-\udfff]")


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.lines: dict[Path, int] = {}
        self._newlines = [m.start() for m in re.finditer("\n", text)]

    def line_of(self, pos: int) -> int:
        return bisect.bisect_left(self._newlines, pos) + 1

    def fail(self, message: str, pos: int) -> json.JSONDecodeError:
        return json.JSONDecodeError(message, self.text, pos)

    def skip(self, pos: int) -> int:
        match = _WS.match(self.text, pos)
        assert match is not None
        return match.end()

    def string(self, pos: int) -> tuple[str, int]:
        string, end = scanstring(self.text, pos + 1, True)
        bad = lone_surrogate(string)
        if bad is not None:
            raise self.fail("a lone surrogate escape (\\ud800-\\udfff) is not a Unicode character", pos)
        return str(string), int(end)

    def value(self, pos: int, path: Path) -> tuple[Any, int]:
        pos = self.skip(pos)
        self.lines[path] = self.line_of(pos)
        text = self.text
        if pos >= len(text):
            raise self.fail("Expecting value", pos)
        char = text[pos]
        if char in "{[" and len(path) >= MAX_DEPTH:
            raise self.fail(f"nested too deeply (more than {MAX_DEPTH} levels)", pos)
        if char == "{":
            return self.obj(pos + 1, path)
        if char == "[":
            return self.arr(pos + 1, path)
        if char == '"':
            return self.string(pos)
        for literal, result in (("true", True), ("false", False), ("null", None)):
            if text.startswith(literal, pos):
                return result, pos + len(literal)
        match = _NUMBER.match(text, pos)
        if match:
            return self.number(match, pos)
        for literal in ("NaN", "Infinity", "-Infinity"):
            if text.startswith(literal, pos):
                raise self.fail(f"{literal} is not valid JSON", pos)
        raise self.fail("Expecting value", pos)

    def number(self, match: re.Match[str], pos: int) -> tuple[int | float, int]:
        token = match.group(0)
        if len(token) > MAX_NUMBER_CHARS:
            raise self.fail(f"a number of {len(token):,} characters is too long (at most {MAX_NUMBER_CHARS})", pos)
        if match.group(1) or match.group(2):
            number = float(token)
            if number in (float("inf"), float("-inf")):
                raise self.fail("the number is out of range (too large for a float)", pos)
            return number, match.end()
        return int(token), match.end()

    def obj(self, pos: int, path: Path) -> tuple[dict[str, Any], int]:
        result: dict[str, Any] = {}
        pos = self.skip(pos)
        if self.text.startswith("}", pos):
            return result, pos + 1
        while True:
            pos = self.skip(pos)
            if not self.text.startswith('"', pos):
                raise self.fail("Expecting property name enclosed in double quotes", pos)
            key_pos, key_line = pos, self.line_of(pos)
            key, pos = self.string(pos)
            pos = self.skip(pos)
            if not self.text.startswith(":", pos):
                raise self.fail("Expecting ':' delimiter", pos)
            if key in result:
                raise self.fail(f"duplicate key {key!r}", key_pos)
            child = (*path, key)
            value, pos = self.value(pos + 1, child)
            # Point errors about a key at the key's line, not the value's.
            self.lines[child] = key_line
            result[key] = value
            pos = self.skip(pos)
            if self.text.startswith("}", pos):
                return result, pos + 1
            if not self.text.startswith(",", pos):
                raise self.fail("Expecting ',' delimiter", pos)
            pos += 1

    def arr(self, pos: int, path: Path) -> tuple[list[Any], int]:
        result: list[Any] = []
        pos = self.skip(pos)
        if self.text.startswith("]", pos):
            return result, pos + 1
        while True:
            value, pos = self.value(pos, (*path, len(result)))
            result.append(value)
            pos = self.skip(pos)
            if self.text.startswith("]", pos):
                return result, pos + 1
            if not self.text.startswith(",", pos):
                raise self.fail("Expecting ',' delimiter", pos)
            pos += 1


def loads_with_lines(text: str) -> tuple[Any, dict[Path, int]]:
    """Parse ``text`` as strict JSON; return the value and a ``{path: line}`` map.

    Raises :class:`json.JSONDecodeError` (with ``lineno``/``colno``) on malformed input,
    including duplicate keys, which plain :mod:`json` silently accepts.
    """
    reader = _Reader(text)
    value, end = reader.value(0, ())
    end = reader.skip(end)
    if end != len(text):
        raise reader.fail("Extra data", end)
    return value, reader.lines


#: Rows nested deeper than this are refused (no task reads below a few levels).
MAX_ROW_DEPTH = 100


def value_problem(value: Any) -> str | None:
    """Why a parsed row cannot be trained on though it is valid JSON: nesting deeper than
    :data:`MAX_ROW_DEPTH` or a lone surrogate (``"\\ud800"``, not encodable as UTF-8) in a string."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if lone_surrogate(item) is not None:
                return "a lone surrogate escape (\\ud800-\\udfff) is not a Unicode character; fix the text"
        elif isinstance(item, (dict, list)):
            if depth >= MAX_ROW_DEPTH:
                return f"nested too deeply (more than {MAX_ROW_DEPTH} levels)"
            children = list(item.items()) if isinstance(item, dict) else [(None, v) for v in item]
            for key, child in children:
                if key is not None:
                    stack.append((key, depth + 1))
                stack.append((child, depth + 1))
    return None
