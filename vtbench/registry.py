"""A small generic registry: explicit or lazy ("module:Attr") registration, duplicate names refused,
unknown names answered with a did-you-mean."""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from typing import Any, Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry name; the message carries close matches."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0])


def did_you_mean(name: str, choices: Iterable[str], kind: str = "name") -> str:
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listing = ", ".join(choices[:30]) + (" ..." if len(choices) > 30 else "")
    return f"unknown {kind} {name!r}.{hint} Known: {listing}"


def load_object(ref: str) -> Any:
    """Import ``"package.module:Attr"``."""
    module_name, _, attr = ref.partition(":")
    if not attr:
        raise ValueError(f"expected 'module:Attr', got {ref!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, obj: T | str | None = None) -> Callable[[T], T] | T | str:
        """Register ``obj`` (or a lazy ``"module:Attr"`` string) under ``name``; usable as a decorator."""
        if obj is None:
            def deco(o: T) -> T:
                self.register(name, o)
                return o
            return deco
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj
        return obj

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownNameError(did_you_mean(name, self._entries, self.kind))
        obj = self._entries[name]
        if isinstance(obj, str):
            obj = load_object(obj)
            self._entries[name] = obj
        return obj  # type: ignore[return-value]

    def names(self, pattern: str | None = None) -> list[str]:
        names = sorted(self._entries)
        return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]

    def __contains__(self, name: str) -> bool:
        return name in self._entries
