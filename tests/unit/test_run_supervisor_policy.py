"""The supervisor's pure parts: when to restart a crashed child, how to name an exit."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_service.run_config import RunSettings, load
from agent_service.supervisor import (
    RestartPolicy,
    address_of,
    describe_exit,
    exposed_data_problem,
    split_listen,
)

POLICY = RestartPolicy(initial_s=0.5, max_s=10.0, stable_s=10.0, max_failures=8)


def test_crashes_in_a_row_double_the_delay_up_to_the_cap_then_give_up() -> None:
    failures, delays = 0, []
    for _ in range(10):
        failures, delay = POLICY.after_exit(failures, uptime_s=1.0)
        delays.append(delay)
    assert delays[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert delays[7] is None  # the 8th crash in a row: give up
    assert all(d is None or d <= POLICY.max_s for d in delays)


def test_a_child_that_stayed_up_long_enough_starts_over_at_the_first_delay() -> None:
    failures = 0
    for _ in range(5):
        failures, _ = POLICY.after_exit(failures, uptime_s=1.0)
    assert failures == 5
    failures, delay = POLICY.after_exit(failures, uptime_s=POLICY.stable_s)
    assert (failures, delay) == (1, 0.5)


def test_exits_are_named_as_a_person_would() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-15) == "killed by SIGTERM"
    assert describe_exit(3) == "exit code 3"


def test_ready_lines_and_listen_addresses_parse() -> None:
    assert address_of("ws_edge listening on http://127.0.0.1:8080\n") == "127.0.0.1:8080"
    assert address_of("agent_service listening on 127.0.0.1:50051") == "127.0.0.1:50051"
    assert split_listen("[::1]:0") == ("::1", 0)


def test_settings_refuse_nonsense() -> None:
    assert load([]) == RunSettings()
    assert load([]).logs.as_posix() == "var/logs"
    with pytest.raises(SystemExit):
        load(["--service-listen", "50051"])
    with pytest.raises(SystemExit):
        load(["--restart-initial-s", "5", "--restart-max-s", "1"])


def test_the_data_folder_must_stay_out_of_the_file_tools_reach(tmp_path: Path) -> None:
    """Under `make run` the workspace is the repository: var/ (token secret, logs) is out
    of reach only because the store lives there, and the service excludes its folder."""
    workspace, var_dir = tmp_path, tmp_path / "var"
    settings = RunSettings(workspace_dir=workspace, var_dir=var_dir)
    store_in_var = {"AGENT_RELAY_STORE_URL": f"sqlite:///{var_dir}/agent-relay.sqlite3"}
    store_elsewhere = {"AGENT_RELAY_STORE_URL": f"sqlite:///{tmp_path.parent}/x.sqlite3"}
    assert exposed_data_problem(settings, store_in_var) is None
    problem = exposed_data_problem(settings, store_elsewhere)
    assert problem is not None and "the file tools could read it" in problem
    outside = RunSettings(workspace_dir=workspace / "docs", var_dir=var_dir)
    assert exposed_data_problem(outside, store_elsewhere) is None
    hidden = RunSettings(workspace_dir=workspace, var_dir=workspace / ".data")
    assert exposed_data_problem(hidden, store_elsewhere) is None
    same = RunSettings(workspace_dir=workspace, var_dir=workspace)
    assert exposed_data_problem(same, store_in_var) is not None
