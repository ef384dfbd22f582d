"""A real PACS for the DICOMweb tests: Orthanc with its DICOMweb plugin, as a plain process.

Debian packages ``orthanc`` and ``orthanc-dicomweb`` (``.ci/run`` installs them). The server
listens on a free loopback HTTP port only (no DICOM port, no remote access, no
authentication) and keeps its storage and index in a temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass(frozen=True)
class Orthanc:
    base: str  # the REST API

    @property
    def dicomweb(self) -> str:
        return f"{self.base}/dicom-web"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_orthanc(root: Path, servers: dict[str, Any] | None = None, **extra: Any) -> Iterator[Orthanc]:
    """Orthanc under ``root``; skips the test when it is not installed.

    ``servers``: its DICOMweb peers (``DicomWeb.Servers``), e.g. the service to route studies to;
    ``extra``: more configuration (``LuaScripts``, ``StableAge``, …).
    """
    binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")
    if binary is None or not PLUGIN.is_file():
        pytest.skip("Orthanc with its DICOMweb plugin is not installed (Debian orthanc, orthanc-dicomweb)")
    port = _free_port()
    storage = root / "storage"
    storage.mkdir(parents=True)
    config = {
        "Name": "S4CT-TEST",
        "HttpPort": port,
        "DicomServerEnabled": False,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": servers or {}},
        **extra,
    }
    cfg = root / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = (root / "orthanc.log").open("wb")
    proc = subprocess.Popen([binary, str(cfg)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/system", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start (see {root / 'orthanc.log'})")
            time.sleep(0.1)
        yield Orthanc(base)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
