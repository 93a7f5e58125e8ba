"""The contract documents themselves: OpenAPI 3.1 and AsyncAPI 3.0 are valid, every embedded schema is valid
JSON Schema 2020-12, and every frame type and REST path of the reference platform is described.

The AsyncAPI 3.0.0 meta-schema is vendored (``asyncapi-3.0.0.schema.json``, from the npm package
``@asyncapi/specs`` 6.11.1, Apache-2.0) so this runs offline.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from crosstalk.contract import ASYNCAPI, OPENAPI, FrameContract, inline_refs
from openapi_spec_validator import validate as validate_openapi
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

HERE = Path(__file__).resolve().parent
ASYNCAPI_META = HERE / "asyncapi-3.0.0.schema.json"


@pytest.fixture(scope="module")
def asyncapi() -> dict:
    return yaml.safe_load(ASYNCAPI.read_text())


@pytest.fixture(scope="module")
def openapi() -> dict:
    return yaml.safe_load(OPENAPI.read_text())


def asyncapi_errors(document: dict) -> list[str]:
    meta = json.loads(ASYNCAPI_META.read_text())
    return [f"{list(e.absolute_path)}: {e.message[:120]}"
            for e in jsonschema.Draft7Validator(meta).iter_errors(document)]


def test_openapi_document_is_valid_openapi_3_1(openapi):
    assert openapi["openapi"].startswith("3.1")
    validate_openapi(openapi)


def test_openapi_validator_catches_a_broken_document(openapi):
    broken = copy.deepcopy(openapi)
    broken["paths"]["/threads"]["get"]["responses"]["200"] = {"content": {}}  # no description
    with pytest.raises(OpenAPIValidationError):
        validate_openapi(broken)


def test_asyncapi_document_is_valid_asyncapi_3_0(asyncapi):
    assert asyncapi["asyncapi"] == "3.0.0"
    assert asyncapi_errors(asyncapi) == []


def test_asyncapi_check_catches_a_broken_document(asyncapi):
    broken = copy.deepcopy(asyncapi)
    broken["channels"]["agentStream"]["address"] = 5
    broken["operations"]["sendUserMessage"]["action"] = "publish"  # AsyncAPI 2 wording
    assert len(asyncapi_errors(broken)) >= 2


@pytest.mark.parametrize("name", ["asyncapi", "openapi"])
def test_every_embedded_schema_is_valid_json_schema_2020_12(name, asyncapi, openapi):
    document = {"asyncapi": asyncapi, "openapi": openapi}[name]
    schemas = document["components"]["schemas"]
    assert schemas
    for key, schema in schemas.items():
        try:
            jsonschema.Draft202012Validator.check_schema(inline_refs(schema, document))
        except jsonschema.SchemaError as exc:
            pytest.fail(f"{name} components.schemas.{key}: {exc.message}")


def test_every_frame_type_of_the_reference_platform_is_described():
    contract = FrameContract.load()
    server = {"agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed",
              "agent_error", "error"}
    assert set(contract.received) == server
    assert set(contract.types) == server | {"user_message"}


def test_every_rest_route_of_the_reference_platform_is_described(openapi):
    from reference_platform.auth_service import create_app as auth_app
    from reference_platform.backend_service import create_app as backend_app
    from reference_platform.config import Settings

    routes = set()
    for app in (auth_app(Settings()), backend_app(Settings())):
        for route in app.routes:
            if route.path == "/ws":
                continue
            for method in getattr(route, "methods", None) or ["GET"]:
                if method != "HEAD":
                    routes.add((route.path, method.lower()))
    described = {(path, method) for path, item in openapi["paths"].items() for method in item
                 if method in ("get", "post", "put", "patch", "delete")}
    assert routes - described == set(), "routes missing from docs/contract/openapi.yaml"
    assert described - routes == set(), "openapi.yaml describes routes the reference platform lacks"


def test_every_conformance_rule_is_stated_in_the_contract():
    from crosstalk.conformance import RULES

    text = (HERE.parents[1] / "reference_platform" / "README.md").read_text()
    missing = [rule.rule_id for rules in RULES.values() for rule in rules
               if f"**{rule.rule_id}** {rule.level} *(conformance)*" not in text]
    assert missing == [], "rules checked by the conformance suite but not stated with that level"


def test_every_fault_switch_is_in_the_implementation_notes():
    from reference_platform.faults import FAULTS

    notes = (HERE.parents[1] / "reference_platform" / "NOTES.md").read_text()
    assert [name for name in FAULTS if f"| `{name}` |" not in notes] == []
