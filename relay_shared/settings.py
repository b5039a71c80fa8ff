"""Build a process's frozen settings object once, from flags and environment.

A settings class is a frozen dataclass whose fields each carry a `help` text in
their metadata. `load_settings(cls, argv)` builds an argparse parser from the
fields (`--ping-interval-s`), reads `AGENT_RELAY_<FIELD>` variables, and returns
one instance. Precedence: flag, then environment, then the field's default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

ENV_PREFIX = "AGENT_RELAY_"

T = TypeVar("T")


def field(default: Any, help: str, **kwargs: Any) -> Any:
    """A settings field with its default and the help text shown by --help."""
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _converter(annotation: Any) -> Any:
    """The callable that turns flag or environment text into the field's type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        base = _converter(inner[0])
        return lambda text: None if text == "" else base(text)
    if origin is tuple:
        return lambda text: tuple(part.strip() for part in text.split(",") if part.strip())
    if annotation is bool:
        return _parse_bool
    if annotation in (int, float, str, Path):
        return annotation
    raise TypeError(f"unsupported settings type: {annotation!r}")


def build_parser(cls: type[Any], prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field; every flag defaults to 'not given'."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        env = ENV_PREFIX + f.name.upper()
        help_text = f"{f.metadata.get('help', '')} [env {env}; default {f.default!r}]"
        # a boolean flag alone means true (`--insecure-allow-unauthenticated`)
        boolean: dict[str, Any] = {"nargs": "?", "const": "true"} if hints[f.name] is bool else {}
        parser.add_argument(
            flag,
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            type=str,
            help=help_text.replace("%", "%%"),
            **boolean,
        )
    return parser


def load_settings(
    cls: type[T],
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    prog: str = "agent-relay",
    description: str = "",
) -> T:
    """Parse argv and env into one frozen instance of cls. Raises SystemExit on bad input."""
    env = os.environ if env is None else env
    parser = build_parser(cls, prog, description)
    given = vars(parser.parse_args(list(argv) if argv is not None else None))
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        text = given.get(f.name)
        source = "--" + f.name.replace("_", "-")
        if text is None:
            text = env.get(ENV_PREFIX + f.name.upper())
            source = ENV_PREFIX + f.name.upper()
        if text is None:
            continue
        try:
            values[f.name] = _converter(hints[f.name])(text)
        except (TypeError, ValueError) as exc:
            parser.error(f"{source}: {exc}")
    try:
        return cls(**values)
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
