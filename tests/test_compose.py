"""compose.yaml is a valid Compose file (checked against the Compose Specification JSON schema in
the shared data) and wires up the services the deployment needs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
REQUIRED_SERVICES = {"redis", "postgres", "migrate", "worker", "notices", "beat", "web", "mailpit"}
APP_SERVICES = ("migrate", "worker", "notices", "beat", "web")


@pytest.fixture(scope="module")
def validator(shared_data: Path) -> jsonschema.Draft7Validator:
    schema_path = shared_data / "compose-spec" / "compose-spec.json"
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    return command.split() if isinstance(command, str) else list(command or [])


def _queues(command: list[str]) -> list[str]:
    queues_arg = next((arg.split("=", 1)[1] for arg in command if arg.startswith(("-Q=", "--queues="))), None)
    if queues_arg is None:
        flag = next(i for i, arg in enumerate(command) if arg in ("-Q", "--queues"))
        queues_arg = command[flag + 1]
    return queues_arg.split(",")


def test_compose_file_matches_the_compose_spec(compose: dict[str, Any], validator: jsonschema.Draft7Validator) -> None:
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors)
    assert "version" not in compose, "the Compose Specification has no 'version' key (obsolete)"


def test_required_services_and_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services.keys() >= REQUIRED_SERVICES, f"missing services: {REQUIRED_SERVICES - services.keys()}"

    worker = _command(services["worker"])
    assert worker[:4] == ["celery", "-A", "tasks", "worker"]
    assert set(_queues(worker)) == {"render", "plan", "send", "notices"}
    # A worker of its own for subscription messages: a confirmation never waits for a send batch to end.
    notices = _command(services["notices"])
    assert notices[:4] == ["celery", "-A", "tasks", "worker"] and _queues(notices) == ["notices"]
    assert _command(services["beat"])[:4] == ["celery", "-A", "tasks", "beat"]
    assert _command(services["migrate"]) == ["newsletter", "db", "upgrade"]

    for name in APP_SERVICES:
        service = services[name]
        assert service.get("build") == ".", f"{name} must build the app image from this folder"
        env = service["environment"]
        assert env["DATABASE_URL"] == "postgresql://newsletter:newsletter@postgres:5432/newsletter", name
        assert env["REDIS_URL"] == "redis://redis:6379/0", name
        assert env["SMTP_URL"] == "smtp://mailpit:1025", name
        # No default key: `docker compose up` refuses to start until one is set (issue 6, point 6).
        assert env["NEWSLETTER_SECRET_KEY"].startswith("${NEWSLETTER_SECRET_KEY:?"), name

    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("worker", "notices", "beat", "web"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert "redis" in depends, name

    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "8000:8000" in services["web"]["ports"]
    assert "8025:8025" in services["mailpit"]["ports"]
    assert any(str(v).split(":")[0] in compose.get("volumes", {}) for v in services["postgres"]["volumes"])


def test_validator_rejects_a_broken_compose_file(compose: dict[str, Any], validator: jsonschema.Draft7Validator) -> None:
    """The schema check above is real: the same validator refuses malformed files."""
    assert not validator.is_valid({"services": {"web": {"ports": 5}}})
    assert not validator.is_valid({"services": {"web": {"image": "x", "no_such_key": True}}})
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["depends_on"]["migrate"]["condition"] = "service_finished"
    assert not validator.is_valid(broken)
