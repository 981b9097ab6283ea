"""The host operator API's bodies are strict, as a node's are (`node.api.bodies`):
``"reset": "false"`` was a reset to the host's defaults, ``true`` a quota of 1."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from qdspace.node.host.dispatch import Confirmation, QuotaChange, Suspension


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [
        (QuotaChange, {"reset": "false"}, "reset"),
        (QuotaChange, {"reset": 1}, "reset"),
        (QuotaChange, {"changes": {"max_rows": True}}, "changes"),
        (QuotaChange, {"changes": {"max_rows": "1000"}}, "changes"),
        (Suspension, {"reason": 5}, "reason"),
        (Confirmation, {"confirm": 1}, "confirm"),
    ],
)
def test_a_value_of_another_json_type_is_refused(model: Any, body: Any, field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        model.model_validate(body)
    assert refused.value.errors()[0]["loc"][0] == field


def test_values_as_json_writes_them_are_taken() -> None:
    change = QuotaChange.model_validate({"changes": {"max_rows": 1000, "rps": 2.5}})
    assert change.changes == {"max_rows": 1000, "rps": 2.5} and not change.reset
    assert QuotaChange.model_validate({"changes": {"max_rows": None}, "reset": True}).reset
