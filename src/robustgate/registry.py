"""Registries: the names a config, the command line and the pipeline accept, each mapped to the
one object that owns what the name means.

A registry sits below every layer, so that any layer reads it; its entries register from the
layer that defines them (the selector kinds from ``robustgate.selector_kinds``, imported by the
package's face, so that a name is known before any config is read). A name is tested nowhere
else: who needs what a kind does asks the kind.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    """Entries by name, in the order they registered."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, entry: Entry) -> Entry:
        """Add ``entry`` under ``name``; a name registers once."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered already")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a kind registered for a while, as a test's)."""
        del self._entries[name]

    def __getitem__(self, name: str) -> Entry:
        if name not in self._entries:
            raise ValueError(f"unknown {self.what} {name!r}; choose from {list(self._entries)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def values(self) -> list[Entry]:
        return list(self._entries.values())


# the selector kinds (``selector_kinds.SelectorKind``), by the name a composition gives
SELECTOR_KINDS: Registry = Registry("selector")

# the certificate methods (``certify.CertificateMethod``), by the name configs and commands give
CERTIFICATE_METHODS: Registry = Registry("certificate method")
