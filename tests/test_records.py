"""edgekit.records: typed views over the JSON records; the JSON round-trips unchanged."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edgekit.errors import InputError
from edgekit.records import SCHEMAS, Figure, Report, set_sanity

REPORT: dict[str, Any] = {
    "schema": "edgekit/report@1",
    "performance": {
        "variant": {"model_size_mb": {"value": 12.5, "unit": "MB", "estimated": False}},
        "device": {"decode_tokens_per_s": {"value": 8, "unit": "tok/s", "estimated": True}},
    },
    "fidelity": {"top1_agreement": {"value": 0.97, "ci95_low": 0.95, "ci95_high": 0.99, "n": 512}},
    "source": {"fingerprint": "abc"},
}


def test_figures_are_read_typed() -> None:
    rep = Report.from_json(REPORT)
    assert rep.performance("variant", "model_size_mb") == Figure(12.5, "MB", False)
    assert rep.performance("device", "decode_tokens_per_s") == Figure(8.0, "tok/s", True)
    assert rep.value("fidelity", "top1_agreement") == 0.97
    assert rep.value("variant", "latency_ms") is None and rep.fidelity("kld_mean") is None
    assert rep.value("on_device", "model_size_mb") is None and rep.sanity is None


def test_json_round_trips_unchanged_and_sanity_keeps_the_source() -> None:
    data = json.loads(json.dumps(REPORT))
    set_sanity(data, {"failed": []})
    assert data["source"] == {"fingerprint": "abc", "sanity": {"failed": []}}
    rep = Report.from_json(data)
    assert rep.to_json() == data and rep.sanity == {"failed": []}


def test_wrong_schema_is_refused_where_it_is_read() -> None:
    with pytest.raises(InputError, match="edgekit/report@1"):
        Report.from_json({**REPORT, "schema": "edgekit/gate@1"}, "gate.json")
    assert SCHEMAS["report"] == Report.SCHEMA
