"""Glob patterns over relative paths, matched without a backtracking regex.

`Glob.parse(text)` reads a pattern; `Glob.match(path)` says whether a path with
forward slashes fits it. `*` and `?` stay within one folder level, `**` as a
whole segment spans any number of levels (as the last segment, one or more),
`[abc]`, `[a-z]` and `[!abc]` are character classes, and a `[` with no closing
`]` is literal.

Why not `re`: a glob of many `*?` pairs becomes a regex that backtracks
exponentially, and `re` holds the GIL while it does, which stalls the whole
service. Here one segment is matched with the two-pointer wildcard algorithm
(it only ever returns to the latest `*`), and `**` segments with a set of
reachable positions: the cost is at most O(len(pattern) * len(path)).
Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CharClass:
    """`[...]`: single characters and ranges, or anything but them."""

    chars: frozenset[str]
    ranges: tuple[tuple[str, str], ...]
    negate: bool

    def admits(self, char: str) -> bool:
        """True when char is in the class (or, negated, is not)."""
        inside = char in self.chars or any(lo <= char <= hi for lo, hi in self.ranges)
        return inside != self.negate and char != "/"


class _Star:
    """`*`: any run of characters within one segment."""


class _One:
    """`?`: any one character within one segment."""


STAR = _Star()
ONE = _One()
Token = str | CharClass | _Star | _One
Segment = tuple[Token, ...]
GLOBSTAR: None = None  # a `**` segment


@dataclass(frozen=True, slots=True)
class Glob:
    """A parsed pattern: its segments, `None` standing for `**`."""

    segments: tuple[Segment | None, ...]

    @classmethod
    def parse(cls, text: str) -> Glob:
        """The pattern in text (already checked to be relative, no `..`)."""
        return cls(tuple(GLOBSTAR if s == "**" else _tokens(s) for s in text.split("/")))

    def match(self, path: str) -> bool:
        """True when the whole path fits the pattern."""
        parts = path.split("/")
        reachable = {0}  # how many parts the segments so far can have consumed
        last = len(self.segments) - 1
        for i, segment in enumerate(self.segments):
            if segment is None:
                first = min(reachable)
                if i == last:
                    return first < len(parts)  # a final `**` takes one part or more
                reachable = set(range(first, len(parts) + 1))
            else:
                reachable = {
                    n + 1 for n in reachable if n < len(parts) and match_segment(segment, parts[n])
                }
            if not reachable:
                return False
        return len(parts) in reachable


def match_segment(tokens: Segment, name: str) -> bool:
    """True when name (one path component) fits the tokens of one segment."""
    t = n = 0
    star_t, star_n = -1, 0
    while n < len(name):
        token = tokens[t] if t < len(tokens) else None
        if token is STAR:
            star_t, star_n = t, n  # first try matching nothing; widen on a mismatch
            t += 1
        elif token is not None and _admits(token, name[n]):
            t += 1
            n += 1
        elif star_t >= 0:
            star_n += 1
            t, n = star_t + 1, star_n
        else:
            return False
    return all(tok is STAR for tok in tokens[t:])


def _admits(token: Token, char: str) -> bool:
    if isinstance(token, str):
        return token == char
    if isinstance(token, CharClass):
        return token.admits(char)
    return token is ONE


def _tokens(segment: str) -> Segment:
    out: list[Token] = []
    i = 0
    while i < len(segment):
        char = segment[i]
        if char == "*":
            if not out or out[-1] is not STAR:  # `**` inside a segment is one `*`
                out.append(STAR)
        elif char == "?":
            out.append(ONE)
        elif char == "[" and (end := segment.find("]", i + 2)) != -1:
            out.append(_char_class(segment[i + 1 : end]))
            i = end
        else:
            out.append(char)
        i += 1
    return tuple(out)


def _char_class(body: str) -> CharClass:
    negate = body.startswith("!")
    if negate:
        body = body[1:]
    chars: set[str] = set()
    ranges: list[tuple[str, str]] = []
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            ranges.append((body[i], body[i + 2]))
            i += 3
        else:
            chars.add(body[i])
            i += 1
    return CharClass(frozenset(chars), tuple(ranges), negate)
