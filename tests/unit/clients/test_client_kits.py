"""The client kits stay in step with the API: the checked-in OpenAPI document and TypeScript types
are what ``make clients`` writes now, and the TypeScript client compiles against them."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest
import service4ct_client.types

from clients import generate


def test_openapi_json_is_current() -> None:
    assert generate.OPENAPI.read_text(encoding="utf-8") == generate.openapi_text(), (
        "clients/typescript/openapi.json is stale: run `make clients`"
    )


def test_typescript_types_are_current() -> None:
    reason = generate.node_modules()
    if reason is not None:
        pytest.skip(f"schema.d.ts not checked: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        doc = Path(tmp) / "openapi.json"
        doc.write_text(generate.openapi_text(), encoding="utf-8")
        assert generate.SCHEMA_TS.read_text(encoding="utf-8") == generate.schema_ts(doc), (
            "clients/typescript/src/schema.d.ts is stale: run `make clients`"
        )


def test_typescript_client_compiles() -> None:
    reason = generate.node_modules()
    if reason is not None:
        pytest.skip(f"TypeScript compile not run: {reason}")
    done = subprocess.run(
        [str(generate.TS / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json", "--noEmit"],
        check=False,
        cwd=generate.TS,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", sorted(service4ct_client.types.__all__))
def test_python_client_types_match_the_openapi(name: str) -> None:
    """Each TypedDict of the Python client has the fields of the OpenAPI component of its name."""
    typed = getattr(service4ct_client.types, name)
    component = json.loads(generate.OPENAPI.read_text(encoding="utf-8"))["components"]["schemas"][name]
    assert set(typed.__annotations__) == set(component["properties"]), name
    required = set(component.get("required", []))
    assert required <= set(typed.__required_keys__), name
