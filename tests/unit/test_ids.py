"""The ids the service makes (agent_service/ids.py): their shape, and that they differ."""

from __future__ import annotations

import re

from agent_service.ids import is_valid_client_id, new_id, new_run_id


def test_a_run_id_has_the_shape_of_the_other_ids() -> None:
    run_id = new_run_id()
    assert re.fullmatch(r"r_[0-9a-f]{21}", run_id)
    assert len(run_id) == len(new_id("r"))
    assert is_valid_client_id(run_id)


def test_run_ids_made_in_the_same_millisecond_differ() -> None:
    ids = [new_run_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
