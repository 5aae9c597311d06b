"""The Postgres-backed Dagster instance (dagster.postgres.yaml) against the real PostgreSQL server.

Each test run gets a fresh database, dropped afterwards. PostgreSQL must be running: CI machines
have it (`.ci/run` starts it if needed), so its absence fails these tests instead of skipping them.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, job, op
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage
from psycopg2 import sql

from trades_platform.dev import prepare_dagster_home
from trades_platform.testing import unique_topic
from trades_platform_tests.support.stack import FINISHED, PROJECT_ROOT, running_stack, wait_for

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
SCHEDULE = "daily_backfill_schedule"


def _connect(db_name: str) -> psycopg2.extensions.connection:
    try:
        connection = psycopg2.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=db_name, connect_timeout=5
        )
    except psycopg2.OperationalError as error:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} as user {PG_USER!r}: {error}\n"
            "These tests need it (CI machines have it). Start it with\n"
            "  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n"
            "and check with `pg_isready -h 127.0.0.1 -p 5432`."
        )
    connection.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    return connection


@pytest.fixture
def pg_env() -> Iterator[dict[str, str]]:
    """DAGSTER_PG_* pointing at a database created for this test and dropped after it."""
    db_name = f"trades_platform_test_{uuid.uuid4().hex[:12]}"
    admin = _connect("postgres")
    try:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db_name)))
        yield {
            "DAGSTER_PG_HOST": PG_HOST,
            "DAGSTER_PG_PORT": str(PG_PORT),
            "DAGSTER_PG_USER": PG_USER,
            # Trust authentication: an empty password (the variable must still be set).
            "DAGSTER_PG_PASSWORD": "",
            "DAGSTER_PG_DB": db_name,
        }
    finally:
        with admin.cursor() as cursor:
            # FORCE: a daemon or run worker that outlived its stack must not keep the drop away.
            cursor.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db_name))
            )
        admin.close()


def _stored_run_ids(db_name: str) -> set[str]:
    """Run ids straight from the database's `runs` table, bypassing Dagster."""
    connection = _connect(db_name)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT run_id FROM runs")
            return {row[0] for row in cursor.fetchall()}
    finally:
        connection.close()


def test_postgres_config_only_adds_storage_to_the_default() -> None:
    sqlite_config = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    postgres_config = yaml.safe_load((PROJECT_ROOT / "dagster.postgres.yaml").read_text())
    storage = postgres_config.pop("storage")
    assert postgres_config == sqlite_config, "dagster.postgres.yaml drifted from dagster.yaml"
    assert "storage" not in sqlite_config, "dagster.yaml must stay the zero-setup SQLite default"
    database = storage["postgres"]["postgres_db"]
    fields = ("hostname", "port", "username", "password", "db_name")
    assert {key: database[key] for key in fields} == {
        "hostname": {"env": "DAGSTER_PG_HOST"},
        "port": {"env": "DAGSTER_PG_PORT"},
        "username": {"env": "DAGSTER_PG_USER"},
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "db_name": {"env": "DAGSTER_PG_DB"},
    }
    # prepare_dagster_home tells the two copies apart by this name.
    assert "DAGSTER_PG_HOST" not in (PROJECT_ROOT / "dagster.yaml").read_text()


def test_dagster_home_follows_dagster_pg_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGSTER_PG_HOST", raising=False)
    config = prepare_dagster_home() / "dagster.yaml"
    assert config.read_text() == (PROJECT_ROOT / "dagster.yaml").read_text()

    monkeypatch.setenv("DAGSTER_PG_HOST", PG_HOST)
    assert prepare_dagster_home() / "dagster.yaml" == config
    assert config.read_text() == (PROJECT_ROOT / "dagster.postgres.yaml").read_text()

    # The project's file wins on every start: an edit of the copy does not linger.
    config.write_text(config.read_text() + "\n# stale copy\n")
    prepare_dagster_home()
    assert config.read_text() == (PROJECT_ROOT / "dagster.postgres.yaml").read_text()

    monkeypatch.delenv("DAGSTER_PG_HOST")
    prepare_dagster_home()
    assert config.read_text() == (PROJECT_ROOT / "dagster.yaml").read_text()


@op
def say_hello() -> str:
    """A step that logs nothing special: the run and its events are what is stored."""
    return "hello"


@job
def hello_job() -> None:
    """The smallest job that leaves a run and an event log behind."""
    say_hello()


@pytest.mark.postgres
def test_instance_from_postgres_config_stores_a_run(
    pg_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in pg_env.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(PROJECT_ROOT / "dagster.postgres.yaml", home / "dagster.yaml")

    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        result = hello_job.execute_in_process(instance=instance)
        assert result.success
        run_id = result.run_id

    # A second instance (another process would do the same) reads it back from the database.
    with DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == DagsterRunStatus.SUCCESS
        event_types = {event.dagster_event_type for event in instance.all_logs(run_id)}
        assert {DagsterEventType.RUN_SUCCESS, DagsterEventType.STEP_SUCCESS} <= event_types
    assert run_id in _stored_run_ids(pg_env["DAGSTER_PG_DB"])


@pytest.mark.postgres
@pytest.mark.stack
def test_runs_logs_and_schedule_survive_a_restart(
    pg_env: dict[str, str], broker: str, tmp_path: Path
) -> None:
    env = {
        **pg_env,
        "DAGSTER_HOME": str(tmp_path / "home-1"),
        "KAFKA_BROKER_ADDRESS": broker,
        "KAFKA_TOPIC": unique_topic(),
        "KRAKEN_PAIRS": "BTC/USD,ETH/USD",
        # A worker killed with the stack cannot report its end; after the restart the sensor
        # presumes a silent run dead after this long.
        "LIVE_RUN_STALE_SECONDS": "20",
    }
    log_path = tmp_path / "launcher.log"
    with running_stack(env, log_path) as stack:
        live = wait_for(
            "the sensor's live run to be STARTED",
            lambda: [r for r in stack.runs("live_trades_job") if r["status"] == "STARTED"],
            150,
            stack,
        )[0]
        stack.start_schedule(SCHEDULE)
        assert stack.schedule_status(SCHEDULE) == "RUNNING"

        def messages_with_stats() -> list[str] | None:
            # The live op's own progress line, not only Dagster's run bookkeeping.
            messages = stack.run_messages(live["runId"])
            return messages if any("trades/s" in line for line in messages) else None

        before = wait_for("the live run's first stats line", messages_with_stats, 60, stack)
        assert stack.stop() == 0, stack.log_tail()
    assert (tmp_path / "home-1" / "dagster.yaml").read_text() == (
        PROJECT_ROOT / "dagster.postgres.yaml"
    ).read_text()

    # A new, empty DAGSTER_HOME: whatever the UI shows now can only come from PostgreSQL.
    env["DAGSTER_HOME"] = str(tmp_path / "home-2")
    with running_stack(env, log_path) as stack:
        finished = wait_for(
            "the earlier live run to be shown finished",
            lambda: (
                {r["runId"]: r["status"] for r in stack.runs("live_trades_job")}.get(live["runId"])
                in FINISHED
            ),
            90,
            stack,
        )
        assert finished
        after = stack.run_messages(live["runId"])
        assert after[: len(before)] == before, "the earlier run's event log changed or was lost"
        assert stack.schedule_status(SCHEDULE) == "RUNNING"
        statuses = {r["runId"]: r["status"] for r in stack.runs("live_trades_job")}
        print(f"after the restart: {statuses}; {len(after)} events in the earlier run's log")
    assert live["runId"] in _stored_run_ids(pg_env["DAGSTER_PG_DB"])
