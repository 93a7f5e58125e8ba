"""The platform contract as machine-readable documents, and frame validation against it.

``docs/contract/asyncapi.yaml`` (AsyncAPI 3.0) describes every WebSocket frame:
each entry of ``components.messages`` has a ``name`` (the frame's ``type``) and
a ``payload`` JSON Schema (2020-12).  :class:`FrameContract` compiles one
validator per frame type once, then checks frames in a few microseconds each;
a violation is one line naming the frame and the JSON path, e.g.::

    tool_completed frame (run 5f0c…, seq 5) violates the contract at $.payload.tool_call_id:
    5 is not of type 'string'

``docs/contract/openapi.yaml`` (OpenAPI 3.1) describes the REST endpoints;
:func:`openapi_validator` compiles a validator for one response schema.

Example::

    contract = FrameContract.load()            # docs/contract/asyncapi.yaml, cached
    problem = contract.check(frame.data)       # None, or one line
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from .errors import CrosstalkError
from .paths import source_checkout

# docs/contract/ of the checkout; installed, the same documents ship as crosstalk/contract_documents/
CONTRACT_DIR = (_checkout / "docs" / "contract" if (_checkout := source_checkout())
                else Path(__file__).resolve().parent / "contract_documents")
ASYNCAPI = CONTRACT_DIR / "asyncapi.yaml"
OPENAPI = CONTRACT_DIR / "openapi.yaml"
OFF = ("off", "none", "false", "0")
MAX_SHOWN = 160


class ContractError(CrosstalkError, ValueError):
    """A contract document is missing or malformed."""


def _load_yaml(path: Path) -> dict:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ContractError(f"contract document {path} cannot be read: {exc.strerror}; "
                            "give a readable AsyncAPI/OpenAPI YAML file or 'off'") from None
    except yaml.YAMLError as exc:
        raise ContractError(f"contract document {path} is not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ContractError(f"contract document {path} is not a YAML mapping")
    return document


def _resolve(document: dict, pointer: str) -> Any:
    node: Any = document
    for part in pointer.lstrip("#/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or part not in node:
            raise ContractError(f"unresolvable reference {pointer!r}")
        node = node[part]
    return node


def inline_refs(node: Any, document: dict, depth: int = 0) -> Any:
    """``node`` with every local ``$ref`` ("#/...") replaced by its target: a self-contained schema
    validates about ten times faster than one resolving references through a registry per frame."""
    if depth > 50:
        raise ContractError("reference cycle (or nesting deeper than 50) in a contract schema")
    if isinstance(node, list):
        return [inline_refs(item, document, depth + 1) for item in node]
    if not isinstance(node, Mapping):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target = inline_refs(_resolve(document, ref), document, depth + 1)
        rest = {k: inline_refs(v, document, depth + 1) for k, v in node.items() if k != "$ref"}
        return {"allOf": [target, rest]} if rest else target
    return {k: inline_refs(v, document, depth + 1) for k, v in node.items()}


_MERGEABLE_NOTES = ("description", "title", "$schema", "examples")


def flatten_all_of(node: Any) -> Any:
    """``node`` with every ``allOf`` of plain object schemas merged into one schema (same meaning:
    properties conjoined per name, ``required`` united); left as it is when members conflict.
    Fewer nested validators: jsonschema checks a flat schema markedly faster."""
    if isinstance(node, list):
        return [flatten_all_of(item) for item in node]
    if not isinstance(node, Mapping):
        return node
    node = {k: flatten_all_of(v) for k, v in node.items()}
    if "properties" in node and isinstance(node["properties"], Mapping):
        node["properties"] = {k: flatten_all_of(v) for k, v in node["properties"].items()}
    members = node.get("allOf")
    if not isinstance(members, list) or not all(isinstance(m, Mapping) for m in members):
        return node
    merged: dict[str, Any] = {k: v for k, v in node.items() if k != "allOf"}
    for member in members:
        for key, value in member.items():
            if key in _MERGEABLE_NOTES:
                merged.setdefault(key, value)
            elif key == "required":
                merged["required"] = list(dict.fromkeys([*merged.get("required", []), *value]))
            elif key == "properties" and isinstance(value, Mapping):
                properties = dict(merged.get("properties", {}))
                for name, schema in value.items():
                    properties[name] = (flatten_all_of({"allOf": [properties[name], schema]})
                                        if name in properties else schema)
                merged["properties"] = properties
            elif key not in merged or merged[key] == value:
                merged[key] = value
            else:
                return node  # a real conflict (two different consts, types ...): keep allOf
    return merged


def _registry(document: dict, uri: str) -> Registry:
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    return Registry().with_resource(uri, resource)


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


def describe_error(error) -> str:
    """One line for a jsonschema ValidationError: the JSON path and what is wrong (instance shortened)."""
    validator = error.validator
    if validator == "required":
        what = error.message.split(" is a required property")[0]
        return f"{error.json_path}: required property {what} is missing"
    if validator in ("type", "const", "enum", "minLength", "minimum", "pattern"):
        expected = error.validator_value
        return f"{error.json_path}: {_short(error.instance)} does not satisfy {validator} {_short(expected)}"
    return f"{error.json_path}: {error.message[:MAX_SHOWN]}"


class FrameContract:
    """Validators for every frame type of an AsyncAPI document, compiled once."""

    def __init__(self, document: dict, source: str = "asyncapi"):
        self.source = source
        self.validators: dict[str, Draft202012Validator] = {}
        inlined = inline_refs(document, document)
        for key, message in ((inlined.get("components") or {}).get("messages") or {}).items():
            if not isinstance(message, Mapping) or "name" not in message or "payload" not in message:
                raise ContractError(f"{source}: components.messages.{key} needs a name and a payload")
            schema = flatten_all_of({k: v for k, v in message["payload"].items() if k != "$schema"})
            self.validators[str(message["name"])] = Draft202012Validator(schema)
        if not self.validators:
            raise ContractError(f"{source} declares no messages under components.messages")
        # the types a client receives: messages of the operations with action "receive"
        self.received = sorted({
            str(message.get("name"))
            for operation in (inlined.get("operations") or {}).values()
            if isinstance(operation, Mapping) and operation.get("action") == "receive"
            for message in operation.get("messages") or []
            if isinstance(message, Mapping) and message.get("name")
        }) or self.types

    @classmethod
    def load(cls, path: str | Path = ASYNCAPI) -> FrameContract:
        """The contract of an AsyncAPI file, compiled once per file."""
        return _load_frame_contract(str(Path(path).resolve()))

    @property
    def types(self) -> list[str]:
        return sorted(self.validators)

    def violations(self, data: Any, received: bool = True) -> list[str]:
        """Every problem of one parsed frame (empty: it conforms); ``received``: a server-to-client frame."""
        if not isinstance(data, Mapping):
            return [f"$: the frame is not a JSON object ({_short(data)})"]
        frame_type = data.get("type")
        allowed = self.received if received else self.types
        validator = self.validators.get(frame_type) if frame_type in allowed else None
        if validator is None:
            side = "a client receives" if received else "of the contract"
            return [f"$.type: {_short(frame_type)} is not a frame type {side} ({', '.join(allowed)})"]
        if validator.is_valid(data):
            return []
        errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
        return [describe_error(e) for e in errors]

    def check(self, data: Any, raw: str | None = None, received: bool = True) -> str | None:
        """None when the frame conforms, else one line naming the frame and its first problems."""
        if data is None and raw is not None:
            return f"a frame that is not a JSON object violates the contract: {_short(raw)}"
        if data is None:
            return "an empty frame violates the contract"
        problems = self.violations(data, received)
        if not problems:
            return None
        return f"{frame_name(data)} violates the contract at {'; '.join(problems[:3])}"


@functools.lru_cache(maxsize=8)
def _load_frame_contract(path: str) -> FrameContract:
    return FrameContract(_load_yaml(Path(path)), path)


def frame_name(data: Any) -> str:
    """``tool_completed frame (run r1, seq 5)`` or as much of it as the frame carries."""
    if not isinstance(data, Mapping):
        return "a frame"
    parts = [f"{k.split('_')[0]} {data[k]}" for k in ("run_id", "seq") if data.get(k) is not None]
    kind = data.get("type") if isinstance(data.get("type"), str) else "untyped"
    return f"{kind} frame" + (f" ({', '.join(parts)})" if parts else "")


def frame_contract(setting: str | None) -> FrameContract | None:
    """The contract to validate frames with: ``setting`` is a path, empty (the default) or ``off``."""
    if setting is not None and setting.strip().lower() in OFF:
        return None
    return FrameContract.load(Path(setting) if setting and setting.strip() else ASYNCAPI)


@functools.lru_cache(maxsize=2)
def openapi_document(path: str | Path = OPENAPI) -> dict:
    return _load_yaml(Path(path))


@functools.lru_cache(maxsize=128)
def openapi_validator(path: str, method: str, status: str, document_path: str = str(OPENAPI)):
    """A compiled validator for the JSON response schema of ``method path`` answering ``status``."""
    document = openapi_document(document_path)
    try:
        response = document["paths"][path][method.lower()]["responses"][status]
    except KeyError:
        raise ContractError(f"openapi.yaml has no response {status} for {method.upper()} {path}") from None
    where = ("paths", path, method.lower(), "responses", status)
    if isinstance(response.get("$ref"), str):  # a shared response under components/responses
        where = tuple(part.replace("~1", "/").replace("~0", "~") for part in response["$ref"][2:].split("/"))
        response = _resolve(document, response["$ref"])
    schema = (((response.get("content") or {}).get("application/json")) or {}).get("schema")
    if schema is None:
        return None
    uri = "urn:crosstalk:openapi"
    pointer = _pointer(*where, "content", "application/json", "schema")
    return Draft202012Validator({"$ref": uri + pointer}, registry=_registry(document, uri))
