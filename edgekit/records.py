"""Typed views of the records edgekit writes; JSON stays their file form.

A record is frozen and keeps the JSON it was read from (`to_json` gives back exactly that dict, so files written
through it are byte-identical to before); the typed accessors replace `.get(...) or {}` chains at the call sites.
Every record names its schema: `from_json` refuses another, so a wrong file fails where it is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from edgekit.errors import InputError

# The schema of every JSON file edgekit writes (docs/internals.md).
SCHEMAS: dict[str, str] = {
    "export": "edgekit/export@1",
    "compress": "edgekit/compress@1",
    "distill": "edgekit/distill@1",
    "report": "edgekit/report@1",
    "gate": "edgekit/gate@1",
    "build": "edgekit/build@1",
    "fit": "edgekit/fit@1",
}


@dataclass(frozen=True)
class Figure:
    """One measured or estimated figure of a report: `{value, unit, estimated, ...}` in the JSON."""

    value: float | None
    unit: str = ""
    estimated: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Figure | None:
        if not data:
            return None
        value = data.get("value")
        return cls(None if value is None else float(value), str(data.get("unit") or ""), bool(data.get("estimated")))


@dataclass(frozen=True)
class Report:
    """A bench report (schema edgekit/report@1): the figures the gate, fit, bundle and CLI read from it."""

    SCHEMA: ClassVar[str] = SCHEMAS["report"]
    data: Mapping[str, Any]

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "report") -> Report:
        if data.get("schema") != cls.SCHEMA:
            raise InputError(f"{where} is not an edgekit report (schema {data.get('schema')!r}, expected {cls.SCHEMA!r})")
        return cls(data)

    def to_json(self) -> dict[str, Any]:
        return dict(self.data)

    def performance(self, section: str, metric: str) -> Figure | None:
        """`performance.<section>.<metric>`; section: variant, source, device (estimated) or on_device."""
        perf = self.data.get("performance") or {}
        return Figure.from_json((perf.get(section) or {}).get(metric))

    def fidelity(self, metric: str) -> Figure | None:
        return Figure.from_json((self.data.get("fidelity") or {}).get(metric))

    def value(self, section: str, metric: str) -> float | None:
        """The figure's value, None when the report lacks it (`section` "fidelity" or a performance section)."""
        figure = self.fidelity(metric) if section == "fidelity" else self.performance(section, metric)
        return figure.value if figure else None

    @property
    def sanity(self) -> dict[str, Any] | None:
        """The source checks (`source.sanity`) the build ran, None where the report has none."""
        found = (self.data.get("source") or {}).get("sanity")
        return dict(found) if found else None


def set_sanity(report: dict[str, Any], sanity: Mapping[str, Any] | None) -> None:
    """Record the source checks in a report being built (`source.sanity`), keeping its other source fields."""
    report["source"] = {**(report.get("source") or {}), "sanity": sanity}
