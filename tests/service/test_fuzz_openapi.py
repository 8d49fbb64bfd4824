"""Property-based fuzzing of the whole OpenAPI surface (schemathesis) against a live server on loopback.

Every operation the app documents gets generated requests, valid and invalid; every answer must be
no 5xx, JSON where JSON is documented, and match the documented schema. The server runs with an
API key, so the front door (Host, Origin, keys, body limit) sits in every request's path. The
collection holds too few captioned images to train, so no fuzzed tuning job starts a training.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
)

from service.api_keys import create_key
from service.app import create_app
from service.config import Settings
from tests.service.live_server import live_server
from tests.support import png_bytes

# Every operation x EXAMPLES requests: about half a minute on 2 idle cores. Each route also has its own tests
# in the fast loop; this sweep runs in the full suite.
pytestmark = pytest.mark.slow

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, negative_data_rejection]
EXAMPLES = 25  # per operation: the whole run stays around a minute on 2 cores


@pytest.fixture(scope="module")
def fuzz_target(tiny_backbone, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    with live_server(tiny_backbone, data_dir=data_dir, max_request_bytes=4 * 1024 * 1024) as (base, _):
        with httpx.Client(base_url=base) as http:
            cid = http.post("/collections", json={"name": "fuzz"}).json()["id"]
            files = [("files", (f"{i}.png", png_bytes(i))) for i in range(3)]
            http.post(f"/collections/{cid}/images", files=files,
                      data={"metadata": '[{"captions": ["a"]}, {"captions": ["b"]}, {}]'}).raise_for_status()
        from service.db import make_engine, make_session_factory

        engine = make_engine(f"sqlite:///{data_dir / 'service.db'}")
        with make_session_factory(engine)() as session:
            _, key = create_key(session, "fuzzer", "admin", None)
        engine.dispose()
        yield base, key


# The schema the app publishes at /openapi.json (built without starting it; the requests go to the live one).
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_operation_answers_5xx_or_breaks_its_schema(case, fuzz_target):
    base, key = fuzz_target
    case.call_and_validate(base_url=base, headers={"Authorization": f"Bearer {key}"}, checks=CHECKS, timeout=30)
