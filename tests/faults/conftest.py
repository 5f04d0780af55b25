"""The fault scenarios' fixtures (tests/faults/scenario.py), for every test here: a
module asks for ``topology`` or ``webhook_receiver`` by name instead of importing them."""

from __future__ import annotations

from tests.faults.scenario import topology, webhook_receiver

__all__ = ["topology", "webhook_receiver"]
