"""Property-based requests against the OpenAPI spec (schemathesis): no API route answers with a server error.

Every operation gets generated requests (valid and invalid bodies, queries, paths), authenticated with a
real token, on a SQLite database holding the sample archive, a draft issue and three subscribers. The
only check is "not a 5xx": bad input must be a 4xx problem, never a crash.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from newsletter.config import load_settings
from newsletter.db import session_factory, upgrade
from newsletter.issues import articles_by_external_id, create_issue
from newsletter.web import create_app
from tests.editor_setup import seed


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> bytes:
    """The import body is text (JSON Lines); generated values are sent as their UTF-8 text."""
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")


EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "12"))  # per operation; ~35 operations, ~30 s in all


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Any:
    home: Path = tmp_path_factory.mktemp("schemathesis")
    url = f"sqlite:///{home / 'api.db'}"
    upgrade(url)
    config = load_settings({"DATABASE_URL": url, "NEWSLETTER_HOME": str(home), "NEWSLETTER_SECRET_KEY": "schemathesis",
                            "NEWSLETTER_BASE_URL": "https://news.example.org"})  # fmt: skip
    token = seed(config)
    with session_factory(url)() as session:
        create_issue(session, articles_by_external_id(session, ["sample-en-01", "sample-zh-Hans-01"]))
        session.commit()
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(config))
    return schema, {"Authorization": f"Bearer {token}"}


def test_no_server_error(api: Any) -> None:
    schema, auth = api
    operations = [result.ok() for result in schema.include(path_regex="^/api/").get_all_operations()]
    assert len(operations) >= 30
    crashes: list[str] = []
    statuses: Counter[int] = Counter()
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        def run(case: Any) -> None:
            # Most random ids name nothing (404): steer two thirds of them to records that exist.
            for name in ("number", "subscriber_id"):
                value = (case.path_parameters or {}).get(name)
                if isinstance(value, int) and value % 3:
                    case.path_parameters[name] = 1 + value % 4
            response = case.call(headers=auth)
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                crashes.append(
                    f"{case.method} {case.formatted_path} {case.query or ''} {case.body!r:.200} -> {response.status_code} {response.text[:300]}"
                )

        run()
    print("responses by status:", dict(sorted(statuses.items())))
    assert not crashes, "\n".join(crashes[:20])
    assert statuses[200] + statuses[201] + statuses[204] > 50  # the generated requests do reach the routes' work
