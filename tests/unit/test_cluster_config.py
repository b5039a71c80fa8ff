"""`agent-relay cluster`'s pure parts: its settings, its children's command lines, and
which PostgreSQL cluster it starts."""

from __future__ import annotations

import pytest

from agent_service.cluster import child_specs
from agent_service.cluster_backends import pick_pg_cluster
from agent_service.cluster_config import load

LISTING = (
    "14 main 5433 down postgres /var/lib/postgresql/14/main /var/log/x.log\n"
    "15 main 5432 down postgres /var/lib/postgresql/15/main /var/log/y.log\n"
)


def test_the_pg_cluster_on_the_url_s_port_is_chosen_else_the_first() -> None:
    assert pick_pg_cluster(LISTING, 5432) == ("15", "main")
    assert pick_pg_cluster(LISTING, 5999) == ("14", "main")
    assert pick_pg_cluster("", 5432) is None


def test_each_replica_gets_its_own_id_address_and_metrics_and_each_edge_every_replica() -> None:
    settings = load([], {})
    replicas, edges = child_specs(settings)
    assert [s.listen for s in replicas] == ["127.0.0.1:50051", "127.0.0.1:50052"]
    assert [s.listen for s in edges] == ["127.0.0.1:8080", "127.0.0.1:8081"]
    first = replicas[0].argv("127.0.0.1:50051")
    second = replicas[1].argv("127.0.0.1:50052")
    flag = lambda argv, name: argv[argv.index(name) + 1]  # noqa: E731
    assert flag(first, "--replica-id") != flag(second, "--replica-id")
    assert flag(first, "--advertise-address") == "127.0.0.1:50051"
    assert flag(second, "--advertise-address") == "127.0.0.1:50052"
    assert flag(first, "--metrics-listen") == "127.0.0.1:9464"
    assert flag(second, "--metrics-listen") == "127.0.0.1:9465"
    for argv in (first, second):
        assert flag(argv, "--store-url") == "postgresql://postgres@127.0.0.1:5432/agent_relay"
        assert flag(argv, "--log-url") == "redis://127.0.0.1:6379/0?prefix=agent-relay:"
    for spec in edges:
        argv = spec.argv(spec.listen)
        assert flag(argv, "--upstream") == "127.0.0.1:50051,127.0.0.1:50052"
        assert flag(argv, "--listen") == spec.listen


@pytest.mark.parametrize(
    "argv",
    [
        ["--replica-listen", "127.0.0.1:0"],
        ["--replica-metrics-listen", "127.0.0.1:9464"],
        ["--postgres-url", "postgresql://postgres@127.0.0.1:5432"],
        ["--redis-url", "http://127.0.0.1:6379"],
    ],
)
def test_bad_settings_stop_at_once(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        load(argv, {})
