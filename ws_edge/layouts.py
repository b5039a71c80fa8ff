"""Compact attribute storage for aiohttp's per-request objects (memory per idle socket).

CPython 3.11 keeps an object's attributes in a compact array whose keys are shared by
all instances of its class, as long as each attribute name is in the class's shared key
table when it is first set; an object that sets a name the table has no room for gets a
whole dict of its own instead (a StreamWriter's is 464 B, a WebSocketResponse's 208 B).
The table's room shrinks with every instance made, so the first burst of concurrent
requests decides: when many StreamWriters exist before any of them has written (300
sessions created at once is enough), `output_size`, set at the first write, no longer
fits, and every later request of the process, each open WebSocket's 101 included,
carries a dict for the socket's life.

`prime_instance_layouts()` sets, once, on a bare instance of each such class, every
attribute name its methods assign to `self`, while the table still has room: later
instances then find all their names there. It changes no behaviour; call it before the
server answers its first request.
"""

from __future__ import annotations

import dis
import inspect
import itertools
import types

from aiohttp import http_writer

# The per-request classes an open socket keeps for its life whose instances were found
# with a dict of their own (bench/idle_census.py), with the names aiohttp sets on them
# from outside their methods. Priming costs every instance a slot per name, used or not:
# only classes that need it. (WebSocketResponse's methods assign more names than a shared
# key table holds, 30: priming it could crowd out the names a socket uses.)
PER_SOCKET_CLASSES: dict[type, tuple[str, ...]] = {
    http_writer.StreamWriter: (),
}
_SHARED_KEYS_MAX = 30  # CPython's bound on one class's shared key table


def attribute_names(cls: type) -> list[str]:
    """The names `cls`'s own and inherited methods assign to `self`, in first-seen order."""
    names: dict[str, None] = {}
    for klass in reversed(cls.__mro__[:-1]):  # object's own methods assign nothing
        for member in vars(klass).values():
            func = member.fget if isinstance(member, property) else member
            if not isinstance(func, types.FunctionType):
                continue
            self_name = func.__code__.co_varnames[:1]
            recent: list[dis.Instruction] = []
            for instruction in dis.get_instructions(func):
                if instruction.opname == "STORE_ATTR" and _on_self(recent, self_name):
                    names.setdefault(instruction.argval, None)
                recent = [*recent[-7:], instruction]
    return list(names)


def _on_self(recent: list[dis.Instruction], self_name: tuple[str, ...]) -> bool:
    """Whether the STORE_ATTR after `recent` stores on self: `self.x = v` loads self just
    before it; `self.x += v` is `LOAD_FAST self, COPY, LOAD_ATTR x, (the value), SWAP`."""
    if not recent or not self_name:
        return False
    last = recent[-1]
    if last.opname == "LOAD_FAST":
        return (last.argval,) == self_name
    if last.opname == "SWAP":
        return any(
            a.opname == "LOAD_FAST" and (a.argval,) == self_name and b.opname == "COPY"
            for a, b in itertools.pairwise(recent)
        )
    return False


def prime_instance_layouts(
    classes: dict[type, tuple[str, ...]] = PER_SOCKET_CLASSES,
) -> None:
    """Put every attribute name of each class in its shared key table (see the module
    docstring). Idempotent; affects only how instances store their attributes. A class
    with more names than the table holds is left as it is."""
    for cls, extra in classes.items():
        names = list(dict.fromkeys([*attribute_names(cls), *extra]))
        if len(names) > _SHARED_KEYS_MAX:
            continue
        bare: object = object.__new__(cls)
        for name in names:
            if hasattr(type(inspect.getattr_static(cls, name, None)), "__set__"):
                continue  # a property or a slot: not stored in the instance's attributes
            object.__setattr__(bare, name, None)


def release_request_parser(protocol: object) -> bool:
    """Let go of the HTTP request parser of a connection upgraded to a WebSocket.

    aiohttp's request handler keeps its `HttpRequestParser` (the parser, its llhttp state
    and what it kept of the handshake's headers: about 1.9 KB) for the connection's life,
    though once the upgrade is accepted every byte goes to the WebSocket's reader
    (`_payload_parser`) and each of the handler's other uses of `_parser` is behind
    `not self._upgraded` or `self._parser is not None` (aiohttp 3.14; it sets `_parser` to
    None itself when the connection is lost). Call it after `ws.prepare()`. Does nothing,
    and returns False, unless the handler is upgraded with a WebSocket reader in place: an
    aiohttp that renames these attributes keeps the memory rather than failing.
    """
    if getattr(protocol, "_upgraded", False) is not True:
        return False
    if getattr(protocol, "_payload_parser", None) is None:
        return False
    if getattr(protocol, "_parser", None) is None:
        return False
    protocol._parser = None  # type: ignore[attr-defined]
    return True
