"""docker-compose/: the files validate with a real Compose, publish nothing beyond loopback and
carry no default secret (the file is refused without DAGSTER_PG_PASSWORD); SASL is switched on by
environment variables alone, for the Dagster containers and Console; the platform profile's
commands work.

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
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from trades_platform.local_broker import free_port
from trades_platform.processes import stop_process
from trades_platform.settings import KafkaSettings, from_environment

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
README = PROJECT_ROOT / "README.md"
# What a test gives the required password: any value, recognisable where it lands.
PG_PASSWORD = "test-only-pg-password"
# The variables the platform's Kafka clients read for the broker's security.
KAFKA_SECURITY = tuple(
    KafkaSettings.variable(field)
    for field in ("security_protocol", "sasl_mechanism", "sasl_username", "sasl_password")
)
SASL_ON = {
    "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
    "KAFKA_SASL_USERNAME": "trades",
    "KAFKA_SASL_PASSWORD": "test-only-sasl-password",
}


def _compose(
    *args: str, variables: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """docker-compose on the file with only `variables` (default: the required password) set."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(
            "docker-compose is missing: install Debian's package with "
            "`apt-get update && apt-get install -y docker-compose` (.ci/run does this)"
        )
    # Host variables would be interpolated into the file; the test checks the file's defaults.
    host_only = ("DAGSTER_PG_", "KAFKA_", "KRAKEN_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(host_only)}
    env.update({"DAGSTER_PG_PASSWORD": PG_PASSWORD} if variables is None else variables)
    return subprocess.run(
        [binary, "-p", "trades-platform", "-f", str(COMPOSE_FILE), *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def _config(*profile: str, **variables: str) -> dict[str, Any]:
    result = _compose(
        *profile, "config", variables={"DAGSTER_PG_PASSWORD": PG_PASSWORD, **variables}
    )
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
        # Runs write the archive into a named volume, not into the container's own layer.
        assert (_volume_target(service, "archive") or "-") == env["ARCHIVE_URL"]
    assert [_published(port) for port in services["dagster-webserver"]["ports"]] == [
        ("127.0.0.1", "3000", "3000")
    ]
    read_only = services["dagster-webserver-read-only"]
    assert read_only["command"][:2] == ["dagster-webserver", "--read-only"]
    assert [_published(port) for port in read_only["ports"]] == [("127.0.0.1", "3001", "3000")]


def _volume_target(service: dict[str, Any], volume: str) -> str | None:
    """Where the service mounts the named volume, as `config` prints it (short or long form)."""
    for mount in service.get("volumes", []):
        if isinstance(mount, dict):
            if mount.get("source") == volume:
                return str(mount["target"])
        elif mount.split(":")[0] == volume:
            return str(mount.split(":")[1])
    return None


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
                # Only the password given is set; a default or a hard-coded value would show here.
                assert value in (None, PG_PASSWORD), f"{name}: {variable}={value!r}"


@pytest.mark.parametrize("profile", PROFILES, ids=["default", "platform"])
@pytest.mark.parametrize("password", [None, ""], ids=["unset", "empty"])
def test_config_is_refused_without_the_instance_password(
    profile: tuple[str, ...], password: str | None
) -> None:
    # `${VAR:?}`, not `${VAR}`: a blank password never reaches Postgres, and the error says why.
    variables = {} if password is None else {"DAGSTER_PG_PASSWORD": password}
    result = _compose(*profile, "config", "-q", variables=variables)
    assert result.returncode != 0, "docker-compose config passed without DAGSTER_PG_PASSWORD"
    assert "set DAGSTER_PG_PASSWORD" in result.stderr, result.stderr


def test_every_password_in_the_file_is_required_or_passed_through() -> None:
    text = COMPOSE_FILE.read_text()
    secrets = re.findall(r"\$\{(\w*(?:PASSWORD|SECRET)\w*)([^}]*)\}", text)
    assert secrets, "no password interpolated: the pattern no longer matches the file"
    for name, rest in secrets:
        assert rest.startswith(":?"), f"${{{name}{rest}}}: write ${{{name}:?message}}"
    # As written, before interpolation: each password variable is required (`${VAR:?...}`) or
    # passed through (no value: from Compose's environment when set, else absent).
    raw = yaml.safe_load(text)
    environments = [raw["x-dagster"]["environment"]] + [
        service.get("environment") or {} for service in raw["services"].values()
    ]
    found = {}
    for environment in environments:
        for variable, value in environment.items():
            if "PASSWORD" in variable:
                found[variable] = value
                assert value is None or re.fullmatch(r"\$\{\w+:\?[^}]+\}", value), (
                    f"{variable}: {value!r}"
                )
    assert found["KAFKA_SASL_PASSWORD"] is None, found
    assert found["POSTGRES_PASSWORD"] == found["DAGSTER_PG_PASSWORD"], found


def test_sasl_is_off_by_default_for_the_platform_and_console() -> None:
    services = _config("--profile", "platform")["services"]
    for name in DAGSTER:
        env = services[name]["environment"]
        assert env["KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT", name
        assert env.get("KAFKA_SASL_PASSWORD") is None, name
        assert _kafka_client_config(env) == {
            "bootstrap.servers": "redpanda:9092",
            "security.protocol": "PLAINTEXT",
        }, name
    console = _console_environment(services["console"])
    assert not {key for key in console if key.startswith(("KAFKA_SASL", "KAFKA_TLS"))}, console


def test_sasl_is_switched_on_by_environment_variables_alone() -> None:
    services = _config("--profile", "platform", **SASL_ON)["services"]
    for name in DAGSTER:
        env = services[name]["environment"]
        assert {variable: env.get(variable) for variable in KAFKA_SECURITY} == SASL_ON, name
        # What the platform's clients are built from, read as the container would read it.
        assert _kafka_client_config(env) == {
            "bootstrap.servers": "redpanda:9092",
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": "trades",
            "sasl.password": SASL_ON["KAFKA_SASL_PASSWORD"],
        }, name
    console = _console_environment(services["console"])
    # Console's own names for kafka.sasl.* (its environment overrides its config file).
    assert console["KAFKA_SASL_ENABLED"] == "true"
    assert console["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-256"
    assert console["KAFKA_SASL_USERNAME"] == "trades"
    assert console["KAFKA_SASL_PASSWORD"] == SASL_ON["KAFKA_SASL_PASSWORD"]
    assert "KAFKA_TLS_ENABLED" not in console
    tls = _config("--profile", "platform", **{**SASL_ON, "KAFKA_SECURITY_PROTOCOL": "sasl_ssl"})
    assert _console_environment(tls["services"]["console"])["KAFKA_TLS_ENABLED"] == "true"


def _kafka_client_config(env: dict[str, str | None]) -> dict[str, Any]:
    """The librdkafka settings `KafkaSettings.from_environment` makes of a container's variables."""
    with pytest.MonkeyPatch.context() as patch:
        for variable in list(os.environ):
            if variable.startswith(KafkaSettings.ENV_PREFIX):
                patch.delenv(variable)
        for variable, value in env.items():
            if variable.startswith(KafkaSettings.ENV_PREFIX) and value is not None:
                patch.setenv(variable, value)
        return from_environment(KafkaSettings).client_config()


def _console_environment(console: dict[str, Any]) -> dict[str, str]:
    """The environment Console's own process starts with: its command, run here up to the exec."""
    assert console["entrypoint"] == "/bin/sh"
    # `config` prints `$` escaped as `$$`; the container's shell sees one.
    script = console["command"][1].replace("$$", "$")
    assert script.count("exec /app/console") == 1, script
    with tempfile.TemporaryDirectory() as directory:
        env = {key: value for key, value in console["environment"].items() if value is not None}
        env.update(CONFIG_FILEPATH=str(Path(directory) / "config.yml"), PATH=os.environ["PATH"])
        result = subprocess.run(
            ["/bin/sh", "-c", script.replace("exec /app/console", "exec env -0")],
            env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        config = yaml.safe_load(Path(env["CONFIG_FILEPATH"]).read_text())
    assert config["kafka"]["brokers"] == ["redpanda:9092"], config
    pairs = (entry.split("=", 1) for entry in result.stdout.split("\0") if entry)
    return {key: value for key, value in pairs if key not in ("PWD", "SHLVL", "_")}


def test_readme_documents_exposing_it_beyond_one_host() -> None:
    text = README.read_text()
    match = re.search(r"^### Exposing it beyond one host\n(.*?)(?=^#{1,3} )", text, re.M | re.S)
    assert match, 'README has no section "### Exposing it beyond one host"'
    section = match.group(1)
    for needed in (
        *KAFKA_SECURITY,
        "DAGSTER_PG_PASSWORD",
        "rpk security user create",
        "rpk security acl create",
        "rpk cluster config set enable_sasl true",
        "--mode dev-container",
        "127.0.0.1",
        "--read-only",
    ):
        assert needed in section, f"the section does not name {needed}"


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
