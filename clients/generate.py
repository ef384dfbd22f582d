"""Write the service's OpenAPI document and the TypeScript types generated from it (``make clients``).

``clients/typescript/openapi.json`` is ``app.main``'s document, built without a server and without
the environment's settings (the defaults), so it is the same on every machine.
``clients/typescript/src/schema.d.ts`` is generated from it by ``openapi-typescript`` (the version
pinned in ``clients/typescript/package.json``; run ``npm ci`` there first).

Usage: python clients/generate.py [--check]   (--check: exit 1 when a checked-in file is stale)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
TS = ROOT / "clients" / "typescript"
OPENAPI = TS / "openapi.json"
SCHEMA_TS = TS / "src" / "schema.d.ts"
GENERATOR = TS / "node_modules" / ".bin" / "openapi-typescript"


def node_modules() -> str | None:
    """Make clients/typescript/node_modules ready (``npm ci`` from the lock file when it is missing).

    Returns None when ready, else why not (no node/npm, or ``npm ci`` failed: e.g. no registry).
    """
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are not installed (the TypeScript client's checks need Node 20+)"
    if (TS / "node_modules" / ".bin" / "tsc").exists() and GENERATOR.exists():
        return None
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline"],
        check=False,
        cwd=TS,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return f"`npm ci` in clients/typescript failed: {done.stderr.strip()[-500:]}"
    return None


def build_typescript() -> None:
    """Compile clients/typescript/src to dist/ with the pinned ``tsc`` (after :func:`node_modules`)."""
    subprocess.run([str(TS / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json"], cwd=TS, check=True)


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI document with default settings (no ``S4CT_*`` variable is read)."""
    sys.path.insert(0, str(ROOT))
    from app.config import Settings
    from app.main import create_app

    clean = {k: v for k, v in os.environ.items() if not k.startswith("S4CT_")}
    with mock.patch.dict(os.environ, clean, clear=True):
        settings = Settings(_env_file=None)
    doc: dict[str, Any] = create_app(settings).openapi()
    return doc


def openapi_text() -> str:
    """``openapi.json`` as checked in: two-space indents, keys in the document's order, UTF-8."""
    return json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"


def schema_ts(openapi_json: Path) -> str:
    """``schema.d.ts`` generated from ``openapi_json`` (needs ``npm ci`` in clients/typescript)."""
    if not GENERATOR.exists():
        raise FileNotFoundError(f"{GENERATOR} is missing: run `npm ci` in {TS}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "schema.d.ts"
        subprocess.run(
            [str(GENERATOR), str(openapi_json), "--default-non-nullable", "false", "-o", str(out)],
            check=True,
            cwd=TS,
            capture_output=True,
        )
        return out.read_text(encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the checked-in files, write nothing")
    args = ap.parse_args()
    text = openapi_text()
    if args.check:
        stale = OPENAPI.read_text(encoding="utf-8") != text
        if shutil.which("node") and GENERATOR.exists():
            with tempfile.TemporaryDirectory() as tmp:
                doc = Path(tmp) / "openapi.json"
                doc.write_text(text, encoding="utf-8")
                stale |= SCHEMA_TS.read_text(encoding="utf-8") != schema_ts(doc)
        print("stale: run `make clients`" if stale else "current")
        return 1 if stale else 0
    OPENAPI.write_text(text, encoding="utf-8")
    print(f"wrote {OPENAPI.relative_to(ROOT)}")
    SCHEMA_TS.write_text(schema_ts(OPENAPI), encoding="utf-8")
    print(f"wrote {SCHEMA_TS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
