"""docker-compose/: the files validate with a real Compose, publish nothing beyond loopback and
carry no default secret; the platform profile's commands work.

No Docker engine is needed: `docker-compose config` parses and interpolates the file, and the code
container's own command (a Dagster gRPC code server) runs here as a process, answers its health
check, and serves the workspace the webserver and the daemon load.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from trades_platform.local_broker import free_port
from trades_platform.processes import stop_process

pytestmark = pytest.mark.compose

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = PROJECT_ROOT / "docker-compose" / "docker-compose.yml"
PLATFORM = (
    "postgres",
    "trades-platform-code",
    "dagster-webserver",
    "dagster-webserver-read-only",
    "dagster-daemon",
)
DAGSTER = (
    "trades-platform-code",
    "dagster-webserver",
    "dagster-webserver-read-only",
    "dagster-daemon",
)
PROFILES = [(), ("--profile", "platform")]
BIN = Path(sys.executable).parent


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(
            "docker-compose is missing: install Debian's package with "
            "`apt-get update && apt-get install -y docker-compose` (.ci/run does this)"
        )
    # Host variables would be interpolated into the file; the test checks the file's defaults.
    host_only = ("DAGSTER_PG_", "KAFKA_", "KRAKEN_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(host_only)}
    return subprocess.run(
        [binary, "-p", "trades-platform", "-f", str(COMPOSE_FILE), *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def _config(*profile: str) -> dict[str, Any]:
    result = _compose(*profile, "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.mark.parametrize("profile", PROFILES, ids=["default", "platform"])
def test_compose_file_is_valid(profile: tuple[str, ...]) -> None:
    result = _compose(*profile, "config", "-q")
    assert result.returncode == 0, f"docker-compose config -q failed:\n{result.stderr}"


def test_platform_profile_wires_dagster_to_postgres_and_redpanda() -> None:
    services = _config("--profile", "platform")["services"]
    # Redpanda and Console stay profile-less: `make start-redpanda` keeps working as before.
    for name in ("redpanda", "console"):
        assert not services[name].get("profiles"), name
    for name in PLATFORM:
        assert services[name]["profiles"] == ["platform"], name
    postgres = services["postgres"]
    assert re.fullmatch(r"postgres:\d+\.\d+[-\w]*", postgres["image"]), "pin the Postgres image"
    for name in DAGSTER:
        service = services[name]
        env = service["environment"]
        assert env["KAFKA_BROKER_ADDRESS"] == "redpanda:9092"
        assert env["DAGSTER_PG_HOST"] == "postgres"
        assert env["DAGSTER_PG_USER"] == postgres["environment"]["POSTGRES_USER"]
        assert env["DAGSTER_PG_PASSWORD"] == postgres["environment"]["POSTGRES_PASSWORD"]
        assert env["DAGSTER_PG_DB"] == postgres["environment"]["POSTGRES_DB"]
        dockerfile = Path(service["build"]["context"]) / service["build"]["dockerfile"]
        assert dockerfile == PROJECT_ROOT / "docker-compose" / "Dockerfile"
    assert [_published(port) for port in services["dagster-webserver"]["ports"]] == [
        ("127.0.0.1", "3000", "3000")
    ]
    read_only = services["dagster-webserver-read-only"]
    assert read_only["command"][:2] == ["dagster-webserver", "--read-only"]
    assert [_published(port) for port in read_only["ports"]] == [("127.0.0.1", "3001", "3000")]


def _published(port: str | dict[str, Any]) -> tuple[str, str, str]:
    """(host address, host port, container port) of a `ports` entry as `config` prints it."""
    if isinstance(port, dict):
        return (str(port.get("host_ip", "")), str(port["published"]), str(port["target"]))
    host, published, target = port.split("/")[0].rsplit(":", 2)
    return host, published, target


@pytest.mark.parametrize("profile", PROFILES, ids=["default", "platform"])
def test_nothing_is_published_beyond_loopback_and_no_secret_has_a_default(
    profile: tuple[str, ...],
) -> None:
    services = _config(*profile)["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert _published(port)[0] == "127.0.0.1", f"{name} publishes {port}"
    published = {_published(port)[1] for s in services.values() for port in s.get("ports", [])}
    # Kafka for the host; Console; the two UIs. Not the proxy, registry or admin API.
    assert published <= {"19092", "8080", "3000", "3001"}, published
    assert not published & {"18081", "18082", "19644", "9644", "5432"}, published
    for name, service in services.items():
        for variable, value in (service.get("environment") or {}).items():
            if "PASSWORD" in variable:
                # `_compose` runs without DAGSTER_PG_PASSWORD: a default would show here.
                assert not value, f"{name}: {variable} has a default"


def test_dockerfile_copies_only_what_the_build_context_sends() -> None:
    dockerfile = (PROJECT_ROOT / "docker-compose" / "Dockerfile").read_text()
    sources = [
        source
        for line in dockerfile.splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    ]
    allowed = {
        line.removeprefix("!").rstrip("/")
        for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert sources, "no COPY lines found"
    for source in sources:
        assert (PROJECT_ROOT / source).exists(), f"COPY {source}: no such file"
        assert source.rstrip("/") in allowed, f"COPY {source}: excluded by .dockerignore"


def test_code_container_command_serves_the_workspace(tmp_path: Path) -> None:
    services = _config("--profile", "platform")["services"]
    code = services["trades-platform-code"]
    port = str(free_port())
    # The container's command, on loopback and a free port instead of 0.0.0.0:4000.
    command = [{"0.0.0.0": "127.0.0.1", "4000": port}.get(arg, arg) for arg in code["command"]]
    health = [{"4000": port}.get(arg, arg) for arg in code["healthcheck"]["test"][1:]]
    workspace = yaml.safe_load((PROJECT_ROOT / "docker-compose" / "workspace.yaml").read_text())
    target = workspace["load_from"][0]["grpc_server"]
    assert (target["host"], str(target["port"])) == ("trades-platform-code", "4000")
    target.update(host="127.0.0.1", port=int(port))
    local_workspace = tmp_path / "workspace.yaml"
    local_workspace.write_text(yaml.safe_dump(workspace))

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    log = open(tmp_path / "code-server.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while subprocess.run(health, env=env, capture_output=True).returncode != 0:
            assert server.poll() is None, (tmp_path / "code-server.log").read_text()
            assert time.monotonic() < deadline, "the code server never passed its health check"
            time.sleep(1)
        # -l: the location name the workspace gives must be the one the server serves.
        jobs = subprocess.run(
            [str(BIN / "dagster"), "job", "list", "-w", str(local_workspace), "-l",
             "trades_platform"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert jobs.returncode == 0, jobs.stderr
        assert "live_trades_job" in jobs.stdout and "backfill_trades_job" in jobs.stdout
    finally:
        stop_process(server)
        log.close()
