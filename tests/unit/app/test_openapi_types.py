"""No untyped object in the OpenAPI contract (issue: no ``dict[str, Any]`` in public schemas).

Every schema of ``components`` and every JSON request and response body is walked. A node is
untyped when it accepts anything (``{}``, or only a title/description) or is an object with
neither properties nor a typed ``additionalProperties``. Models with typed properties that
also pass unknown keys through (``extra="allow"``: blocks a newer worker may extend) count as
typed. Non-JSON bodies (DICOM Part 10, FHIR) follow their own standards and are not walked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.api.routes.models import model_card
from app.config import Settings
from app.main import create_app
from app.schemas_explain import PARAMS_MODELS
from ml.explain import METHODS
from ml.model.manifest import Manifest

ROOT = Path(__file__).resolve().parents[3]

#: the few places that are opaque by contract, each with its reason
ALLOWED: dict[str, str] = {
    # the caller's own JSON object (≤ 4 KiB), stored and echoed, never interpreted (§3.11)
    "metadata": "client metadata",
    # STOW-RS answers DICOM JSON (PS3.18 F.2), a standard's dataset; FastAPI lists it as JSON too
    "paths./v1/dicomweb/studies.post.200.application/json": "DICOM JSON model",
}
_DOC_KEYS = {"title", "description", "examples", "example", "default", "deprecated"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    doc: dict[str, Any] = create_app(Settings()).openapi()
    return doc


def _untyped_leaf(node: dict[str, Any], components: dict[str, Any]) -> bool:
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = components[ref.rsplit("/", 1)[1]]
        return not (set(target) - _DOC_KEYS)
    if not (set(node) - _DOC_KEYS):
        return True
    if node.get("type") == "object" and "properties" not in node:
        extra = node.get("additionalProperties")
        return extra in (None, True, {})
    return False


def _walk(node: Any, path: str, components: dict[str, Any], out: list[str]) -> None:
    if isinstance(node, list):
        for i, v in enumerate(node):
            _walk(v, f"{path}[{i}]", components, out)
        return
    if not isinstance(node, dict):
        return
    if _untyped_leaf(node, components):
        out.append(path)
        return
    for key, value in node.items():
        if key in ("examples", "example", "default", "enum", "const", "required"):
            continue  # data, not schemas
        if key == "properties":
            for name, prop in value.items():
                _walk(prop, f"{path}.{name}", components, out)
        else:
            _walk(
                value,
                f"{path}.{key}" if key not in ("anyOf", "oneOf", "allOf", "items") else path,
                components,
                out,
            )


def _allowed(path: str) -> bool:
    return any(path.endswith("." + key) or path == key or f".{key}." in path for key in ALLOWED)


def untyped(spec: dict[str, Any]) -> list[str]:
    """The paths of the untyped schema nodes of ``spec`` (OpenAPI 3.1)."""
    components: dict[str, Any] = spec["components"]["schemas"]
    found: list[str] = []
    for name, schema in components.items():
        if name == "JsonValue":  # what ``metadata`` refers to; the references are checked instead
            continue
        _walk(schema, f"components.{name}", components, found)
    for route, ops in spec["paths"].items():
        for verb, op in ops.items():
            bodies = [("request", op.get("requestBody", {}))]
            bodies += [(status, r) for status, r in op.get("responses", {}).items()]
            for where, body in bodies:
                media = body.get("content", {}).get("application/json")
                if media is not None:
                    _walk(
                        media.get("schema", {}),
                        f"paths.{route}.{verb}.{where}.application/json",
                        components,
                        found,
                    )
    return found


def test_no_untyped_object_in_the_public_schemas(spec: dict[str, Any]) -> None:
    bad = [p for p in untyped(spec) if not _allowed(p)]
    assert bad == [], f"untyped schemas (give them a model, or justify them in ALLOWED): {bad}"


def test_the_check_finds_untyped_objects() -> None:
    components = {"Any": {}, "M": {"type": "object", "properties": {"a": {"type": "integer"}}}}
    doc = {
        "components": {
            "schemas": {
                **components,
                "Bad": {
                    "type": "object",
                    "properties": {
                        "loose": {"type": "object", "additionalProperties": True},
                        "anything": {"$ref": "#/components/schemas/Any"},
                        "items": {"type": "array", "items": {"anyOf": [{}, {"type": "null"}]}},
                        "fine": {"type": "object", "additionalProperties": {"type": "string"}},
                        "model": {"$ref": "#/components/schemas/M"},
                        "metadata": {"type": "object", "additionalProperties": True},
                    },
                },
            }
        },
        "paths": {"/x": {"get": {"responses": {"200": {"content": {"application/json": {"schema": {}}}}}}}},
    }
    found = untyped(doc)
    assert found == [
        "components.Any",
        "components.Bad.loose",
        "components.Bad.anything",
        "components.Bad.items[0]",
        "components.Bad.metadata",
        "paths./x.get.200.application/json",
    ]
    assert [p for p in found if not _allowed(p)] == [*found[:4], found[5]]  # metadata is allowed


def test_explanation_params_are_typed_per_method(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    refs = {r["$ref"].rsplit("/", 1)[1] for r in schemas["ExplainRequest"]["properties"]["params"]["anyOf"]}
    assert refs == {"GradCamParams", "IntegratedGradientsParams", "SaliencyParams", "OcclusionParams"}
    assert (
        schemas["JobCreate"]["properties"]["explain_params"]["anyOf"]
        == (schemas["ExplainRequest"]["properties"]["params"]["anyOf"])
    )
    for name in refs:
        assert schemas[name]["additionalProperties"] is False


def test_the_method_models_mirror_the_table() -> None:
    """Names, bounds, choices and defaults of the per-method models are :data:`ml.explain.METHODS`'."""
    for method, spec in METHODS.items():
        schema = PARAMS_MODELS[method].model_json_schema()
        props = schema["properties"]
        allowed = spec.allowed(api=True)
        assert set(props) == set(allowed), method
        for name, p in allowed.items():
            prop = props[name]
            kinds = prop.get("anyOf", [prop])
            typed = next(k for k in kinds if k.get("type") != "null")
            assert prop.get("default") == p.default, (method, name)
            if p.kind == "choice":
                assert typed["enum"] == list(p.choices), (method, name)
            else:
                assert typed["type"] == {"int": "integer", "number": "number"}[p.kind], (method, name)
                assert (typed["minimum"], typed["maximum"]) == (p.lo, p.hi), (method, name)


def test_model_card_blocks_are_the_manifests_json() -> None:
    """The typed model card blocks answer the manifest's JSON as it is (no key added or changed)."""
    manifest = Manifest.load(ROOT / "weights" / "manifest.json")
    for name, e in manifest.entries.items():
        d = e.to_dict()
        out = model_card(manifest, name, None).model_dump(mode="json", exclude_unset=True)
        blocks = {k: d[k] for k in ("preprocess", "operating_points", "calibration")} | {"metrics": e.metrics}
        for key, block in blocks.items():
            assert json.dumps(out[key], sort_keys=True) == json.dumps(block, sort_keys=True), (name, key)
        ood = None if e.ood is None else e.ood.to_dict()
        assert out["ood"] == (
            None if ood is None else {k: v for k, v in ood.items() if k not in ("uri", "sha256")}
        )
