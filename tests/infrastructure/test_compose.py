"""Cheap static checks of compose.yaml, the Dockerfile and the example config, in the default suite: every
command a service runs is a real CLI subcommand with valid options, every service agrees on one Redis URL,
and the image and config they rely on exist and make sense. They catch a typo in seconds; they do not
stand in for a run. The real run is tests/infrastructure/test_compose_cluster.py, which brings the cluster
up, fails it over, restarts its Redis and stops it (`bash scripts/compose-test`, part of .ci/run)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

import coordinator as co
from coordinator.cli.main import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
CLI = ["python", "-m", "coordinator"]
CONFIG_MOUNT = "/app/coordinator.toml"
#: What users get when they set none of compose.yaml's image variables.
OFFICIAL_PYTHON = "docker.io/library/python:3.11-slim"
OFFICIAL_REDIS = "docker.io/library/redis:7"
VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::-(?P<default>[^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result = compose["services"]
    assert isinstance(result, dict)
    return result


def defaults(value: str) -> str:
    """``value`` with each ``${VAR:-default}`` replaced by its default, as compose does with VAR unset."""
    return VARIABLE.sub(lambda m: m.group("default") or "", value)


def words(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(defaults(value))
    return [defaults(str(item)) for item in value]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def cli_args(service: dict[str, Any]) -> list[str] | None:
    """The CLI's argv when the service runs the CLI (the image has no ENTRYPOINT), else None."""
    argv = words(service.get("entrypoint")) + words(service.get("command"))
    return argv[len(CLI):] if argv[: len(CLI)] == CLI else None


def cli_services(compose: dict[str, Any]) -> dict[str, list[str]]:
    found = {name: cli_args(svc) for name, svc in services(compose).items()}
    return {name: argv for name, argv in found.items() if argv is not None}


def subcommand(argv: list[str]) -> str:
    with_value = {"--config", "--redis"}
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in with_value:
            skip = True
        elif not word.startswith("-"):
            return word
    raise AssertionError(f"no subcommand in {argv}")


def parse(argv: list[str]) -> Any:
    """Parses with the CLI's own parser; a usage error fails the test with argparse's message."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`coordinator {shlex.join(argv)}` is not a valid CLI call: {stderr.getvalue().strip()} "
                    f"(exit {exc.code})")


def documented_cli_calls() -> list[list[str]]:
    """The ``docker compose run --rm cli ...`` examples in compose.yaml's header."""
    calls = re.findall(r"docker compose run --rm cli (.+)", COMPOSE.read_text())
    assert calls, "compose.yaml shows how to run the CLI"
    return [shlex.split(call) for call in calls]


def test_services_are_the_documented_fleet(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    assert set(svcs) == {"redis", "upstream", "worker", "cli", "alerts", "alert-sink", "metrics"}
    assert defaults(svcs["redis"]["image"]) == OFFICIAL_REDIS, "the official Redis image unless overridden"
    # podman-compose reads replicas only with the mode spelled out.
    assert svcs["worker"]["deploy"] == {"mode": "replicated", "replicas": 4}
    cli = svcs["cli"]
    assert cli["profiles"] == ["cli"], "a one-off service: `docker compose up` must not start it"
    assert words(cli["entrypoint"]) == CLI and words(cli["command"]) == ["status"]
    # Running the CLI must not add a container to the network: podman's DNS restarts for each one.
    assert cli["network_mode"] == "service:redis"
    for name in ("upstream", "worker", "cli"):
        svc = svcs[name]
        assert svc["build"]["context"] == ".", name
        assert defaults(svc["build"]["args"]["BASE_IMAGE"]) == OFFICIAL_PYTHON, name
        assert svc["image"] == "coordinator:local", name
        assert f"./deploy/coordinator.toml:{CONFIG_MOUNT}:ro" in svc["volumes"], name
        # The CLI runs as PID 1, which ignores a SIGTERM it has no handler for.
        assert svc["stop_signal"] == "SIGINT", name
    assert cli_services(compose).keys() == {"upstream", "worker", "cli", "alerts", "metrics"}


def test_the_test_override_only_cuts_the_network_off() -> None:
    override = yaml.safe_load((ROOT / "tests" / "infrastructure" / "compose.no-egress.yaml").read_text())
    assert override == {"networks": {"default": {"internal": True}}}


@pytest.mark.parametrize("service", ["upstream", "worker", "cli", "alerts", "metrics"])
def test_each_command_is_a_real_subcommand_with_valid_options(compose: dict[str, Any], service: str) -> None:
    argv = cli_services(compose)[service]
    name = subcommand(argv)
    assert name in COMMANDS, f"compose service {service!r} runs unknown subcommand {name!r}"
    args = parse(argv)
    assert args.command == name
    if name in ("demo", "upstream"):
        return
    assert args.config == "coordinator.toml", "relies on the default path, which is the mounted file in /app"


@pytest.mark.parametrize("argv", documented_cli_calls(), ids=shlex.join)
def test_documented_cli_calls_parse(compose: dict[str, Any], argv: list[str]) -> None:
    cli = services(compose)["cli"]
    # `docker compose run --rm cli ARGS` replaces the service's command and keeps its entrypoint.
    assert parse([*words(cli["entrypoint"])[len(CLI):], *argv]).command == argv[0]


def test_every_service_uses_the_same_redis_url(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    svcs = services(compose)
    urls = {name: environment(svcs[name]).get("COORDINATOR_REDIS_URL") for name in cli_services(compose)}
    assert None not in urls.values(), f"every coordinator service sets COORDINATOR_REDIS_URL: {urls}"
    assert len(set(urls.values())) == 1, f"services disagree on the Redis URL: {urls}"
    (url,) = set(urls.values())
    assert url is not None
    parsed = urlparse(url)
    assert parsed.scheme == "redis" and parsed.hostname in svcs, f"{url} must name the compose Redis service"
    assert defaults(svcs[parsed.hostname]["image"]) == OFFICIAL_REDIS, f"{parsed.hostname} is not a Redis service"
    assert (parsed.port or 6379) == 6379
    for name, argv in cli_services(compose).items():
        flags = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--redis"]
        assert all(flag == url for flag in flags), f"{name} passes --redis {flags}, not {url}"
    monkeypatch.delenv("COORDINATOR_REDIS_URL", raising=False)
    assert co.load_config(ROOT / "deploy" / "coordinator.toml").redis.url == url


def test_workers_and_cli_depend_on_a_healthy_redis(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    assert "healthcheck" in svcs["redis"]
    for name in ("worker", "cli"):
        assert svcs[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert "upstream" in svcs["worker"]["depends_on"]


def test_example_config_is_valid_uses_env_keys_and_the_check_passes(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = ROOT / "deploy" / "coordinator.toml"
    config = co.load_config(path)
    assert config.pools, "the example defines at least one pool"
    worker_env = environment(services(compose)["worker"])
    for pool in config.pools.values():
        for member in pool.members:
            assert member.api_key is None, f"{member.id}: keys come from the environment, not the file"
            assert member.api_key_env in worker_env, f"the workers get no ${member.api_key_env}"
            assert worker_env[member.api_key_env].startswith("sk-fake-"), "compose.yaml holds fake keys only"
    monkeypatch.delenv("COORDINATOR_REDIS_URL", raising=False)
    assert main(["--config", str(path), "check"]) == 0
    out = capsys.readouterr().out
    assert all(value not in out for value in worker_env.values() if value.startswith("sk-"))


def test_dockerfile_builds_the_image_every_service_runs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in dockerfile.splitlines() if line and not line.startswith(("#", " "))]
    assert ["ARG", f"BASE_IMAGE={OFFICIAL_PYTHON}"] in instructions, "the official slim image unless overridden"
    assert ["FROM", "${BASE_IMAGE}"] in instructions
    # With wheels in deploy/wheelhouse (scripts/compose-test) the build needs no network; without, pip as usual.
    assert "pip install --no-index --find-links wheelhouse '.[cli,prometheus]'" in dockerfile
    assert "pip install '.[cli,prometheus]'" in dockerfile
    assert (ROOT / "deploy" / "wheelhouse" / "README.md").is_file(), "COPY deploy/wheelhouse needs the folder in git"
    assert not any(i[0] == "ENTRYPOINT" for i in instructions), "compose.yaml's commands assume no ENTRYPOINT"
    workdirs = [i[1] for i in instructions if i[0] == "WORKDIR"]
    assert workdirs[-1] == str(Path(CONFIG_MOUNT).parent), "the CLI's default ./coordinator.toml is the mounted file"
    for words_ in instructions:
        if words_[0] == "COPY":
            *sources, _target = words_[1].split()
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
