"""Benchmark of the service: streaming upload, job-status latency, end-to-end seconds per study.

Usage::

    python bench/service.py            # full run (1 GiB upload, 500 rps for 20 s, phantom studies), ~4 min
    python bench/service.py --quick    # 64 MiB upload, 100 rps for 3 s, 2 studies per pass, ~1 min
    python bench/service.py --sections upload --upload-mib 256
    python bench/service.py --sections upload --s3-memory-limit 1GiB   # SeaweedFS with more GC room
    python bench/service.py --json var/bench/service.json   # (the default path)

Everything runs on loopback against the embedded stack (PostgreSQL, Redis, SeaweedFS S3)
started in a temp directory with fsync off and no Redis persistence. The API runs as its own
process (``service4ct api``: settings from ``S4CT_*``, the h11 server of app/api/server.py with
its edge limits, no access log), so its RSS and CPU time are its own. Every section
prints its peers measured in the same run and the ratio service/peer.

1. **Upload** of a ~1 GiB ZIP (ZIP_STORED members of incompressible random data, written in
   chunks: never held in memory) with httpx from the file in 1 MiB chunks, three encodings:
   raw ``application/zip`` with Content-Length, raw with ``Transfer-Encoding: chunked``, and
   ``multipart/form-data``. MB/s = 10^6 bytes/s from the first byte sent to the 201. The API's
   RSS is sampled every 50 ms; growth = peak during the upload − RSS just before it (after a
   small warm-up upload). CPU seconds of the API, S3 (weed) and client processes are read from
   /proc, with "other": what the rest of the machine spent meanwhile (other users' processes
   make a run noisy; the start of the run also says how busy the CPUs were). Peers: the same
   file through :meth:`app.storage.Storage.multipart` straight to the same S3 from this
   process (the object-store ceiling: the same multipart code the API uses, minus HTTP and
   sha256), boto3's own managed upload with 2 parts in flight (what a second part in flight
   would give), the same httpx upload into a minimal ASGI app under the same server
   (``app.api.server.uvicorn_config``) that discards the body (the HTTP-stack ceiling), and a raw
   loopback socket copy.
2. **Latency** of ``GET /v1/jobs/{id}`` (5 queued jobs, no worker) at a constant open-loop
   rate: requests are scheduled on a fixed timeline by a separate load process (pure asyncio,
   raw HTTP/1.1 keep-alive connections, no third-party client on the hot path) and latency is
   measured from the *scheduled* send time, so a stalled server cannot hide its backlog
   (no coordinated omission). After a warm-up, p50/p90/p99/max, achieved rate, errors, and the
   CPU of the API, PostgreSQL and the load process (API CPU ms per request). Peer: ``GET
   /healthz`` (same middleware, no auth, no database) at the same rate; ratio of p99s. Then
   the capacity of both routes: a closed loop of 8 connections for a few seconds (the most the
   API serves; the open-loop rate as a fraction of it says how much headroom is left).
3. **End to end** with the demo model on CPU: a worker process (``python -m app.worker``) and
   phantom studies (:func:`ml.phantom.make_study`, small defaults; plus one ``real_like``
   150×512² JPEG-Lossless study) through upload → ``POST /v1/jobs`` → polling every 25 ms
   until succeeded, with ``explain`` gradcam and none. Per-stage medians come from the job's
   ``stage_timings``. Throughput with all N jobs queued at once vs one at a time (job time
   only, uploads excluded) is the pipelining/batching gain.

Goals: upload ≥ 150 MB/s with ≤ 64 MiB API RSS growth; ``GET /v1/jobs/{id}`` p99 ≤ 20 ms at
500 rps. Numbers also go to ``var/bench/service.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hashlib
import json
import os
import platform
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
CLIENT = ROOT / "clients" / "python"  # the typed client (installed by `make venv`; here for a bare checkout)
if str(CLIENT) not in sys.path:
    sys.path.insert(1, str(CLIENT))

import httpx  # noqa: E402
from service4ct_client import Service4CTClient  # noqa: E402

from bench.common import percentiles  # noqa: E402

MiB = 1 << 20
GOAL_UPLOAD_MBPS = 150.0
GOAL_UPLOAD_RSS_MIB = 64.0
GOAL_P99_MS = 20.0
CHUNK = 1 * MiB
RSS_INTERVAL_S = 0.05
STAGES = (
    "fetching",
    "reading",
    "qc",
    "decoding",
    "preprocessing",
    "inference",
    "explaining",
    "saving",
    "total",
)
SECTIONS = ("upload", "latency", "e2e")
CAPACITY_CONNECTIONS = 8
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- process helpers


def _pdeathsig() -> Callable[[], None] | None:
    """preexec_fn: the child gets SIGTERM when this process dies (Linux; main thread only)."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (psutil when installed, else /proc/PID/statm)."""
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        pass
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int | None) -> float:
    """user + system CPU seconds of ``pid`` (all its threads) so far; this process when None."""
    if pid is None:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its direct children (PostgreSQL: postmaster + backends)."""
    total = cpu_seconds(pid)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine have been busy (not idle/iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    return (sum(vals[:8]) - vals[3] - vals[4]) / _CLK_TCK


class CpuMeter:
    """CPU seconds used by a set of processes over a block (``None`` = this process).

    ``used["machine"]`` is what the whole machine spent (every process, including other
    users'): ``machine`` minus the named processes is the rest (benchmark noise).
    """

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.used: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._t0 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        self._m0 = machine_busy_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = {k: cpu_seconds(p) - self._t0[k] for k, p in self.pids.items()}
        self.used["machine"] = machine_busy_seconds() - self._m0


class RssSampler:
    """Samples the RSS of ``pid`` every ``interval`` s in a thread: baseline, peak, growth."""

    def __init__(self, pid: int, interval: float = RSS_INTERVAL_S) -> None:
        self.pid, self.interval = pid, interval
        self.samples = 0

    def __enter__(self) -> RssSampler:
        self.baseline = rss_bytes(self.pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_bytes(self.pid))
                self.samples += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.end = rss_bytes(self.pid)
        self.peak = max(self.peak, self.end)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}: not answering after {timeout:.0f} s\n{_tail(log)}")
        time.sleep(0.05)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "(no log)"


class Child:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with log.open("ab") as fh:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                preexec_fn=_pdeathsig(),  # noqa: PLW1509 -- only prctl, see _pdeathsig
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------- services


@dataclass
class Env:
    """One fresh database, bucket and stream on the shared embedded stack, and an API key."""

    settings: Any
    key: str
    dir: Path
    s3_pid: int | None

    def child_env(self) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("S4CT_")}
        env.update(
            {
                "S4CT_DATABASE_URL": str(s.database_url),
                "S4CT_REDIS_URL": str(s.redis_url),
                "S4CT_S3_ENDPOINT": str(s.s3_endpoint),
                "S4CT_S3_ACCESS_KEY": s.s3_access_key.get_secret_value(),
                "S4CT_S3_SECRET_KEY": s.s3_secret_key.get_secret_value(),
                "S4CT_S3_BUCKET": s.s3_bucket,
                "S4CT_STREAM": s.stream,
                "S4CT_VAR_DIR": str(self.dir / "var"),
                "S4CT_WORK_DIR": str(self.dir / "work"),
                "S4CT_WEIGHTS_CACHE_DIR": str(self.dir / "weights"),
                "S4CT_DEVICE": "cpu",
                "S4CT_LOG_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def storage(self, **kw: Any) -> Any:
        """The bench's bucket through :class:`app.storage.Storage` (``kw``: its keyword options)."""
        from app.storage import Storage

        s = self.settings
        return Storage(
            s.s3_endpoint,
            s.s3_access_key.get_secret_value(),
            s.s3_secret_key.get_secret_value(),
            s.s3_bucket,
            part_size=s.upload_part_bytes,
            **kw,
        )


def fresh_env(stack: Any, root: Path, name: str) -> Env:
    from app.config import Settings
    from app.db import connect
    from app.migrate import migrate
    from app.repository import create_api_key

    tag = f"b{name}{uuid.uuid4().hex[:8]}"
    db_url = stack.create_database(tag)
    settings = Settings(s3_bucket=tag, stream=f"s4ct:{tag}", device="cpu").with_services(
        database_url=db_url,
        redis_url=stack.redis_url,
        s3_endpoint=stack.s3_endpoint,
        s3_access_key=stack.s3_access_key,
        s3_secret_key=stack.s3_secret_key,
    )
    with connect(db_url) as conn:
        migrate(conn)
        _, key = create_api_key(conn, "bench", "bench/service.py")
    d = root / tag
    d.mkdir(parents=True)
    env = Env(settings, key, d, stack.s3.pid if stack.s3 is not None else None)
    env.storage().ensure_bucket()
    return env


class Api:
    """The API in its own process: ``service4ct api`` (``python -m app.cli api``)."""

    def __init__(self, env: Env, name: str = "api") -> None:
        self.env = env
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "app.cli", "api", "--host", "127.0.0.1", "--port", str(self.port)]
        self.child = Child(name, cmd, env.child_env(), env.dir / f"{name}.log")
        _wait_http(f"{self.base}/healthz", self.child.proc, self.child.log)

    @property
    def pid(self) -> int:
        return self.child.pid

    def client(self, timeout: float = 600.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {self.env.key}"}, timeout=timeout
        )

    def service_client(self, timeout: float = 600.0) -> Service4CTClient:
        """The typed client (clients/python) with this API's key: what a product would call."""
        return Service4CTClient(self.base, self.env.key, timeout=timeout)

    def stop(self) -> None:
        self.child.stop()


@contextlib.contextmanager
def api_on(stack: Any, root: Path, name: str) -> Iterator[tuple[Env, Api]]:
    """A fresh :class:`Env` on ``stack`` and an API process on it, stopped on exit."""
    env = fresh_env(stack, root, name)
    api = Api(env)
    try:
        yield env, api
    finally:
        api.stop()


# --------------------------------------------------------------------------- the big ZIP


def build_zip(path: Path, size: int, member_size: int = 16 * MiB, seed: int = 0) -> int:
    """A valid ZIP of ``size`` bytes of random data in ZIP_STORED members, written chunk by chunk."""
    import numpy as np

    rng = np.random.default_rng(seed)
    left, i = size, 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        while left > 0:
            n = min(member_size, left)
            info = zipfile.ZipInfo(f"series/IMG{i:05d}.bin", date_time=(2024, 1, 1, 0, 0, 0))
            with zf.open(info, "w") as w:
                done = 0
                while done < n:
                    k = min(CHUNK, n - done)
                    w.write(rng.bytes(k))
                    done += k
            left -= n
            i += 1
    return path.stat().st_size


def _file_chunks(path: Path, prefix: bytes = b"", suffix: bytes = b"") -> Iterator[bytes]:
    if prefix:
        yield prefix
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk
    if suffix:
        yield suffix


def upload_body(path: Path, mode: str) -> tuple[Iterator[bytes], dict[str, str]]:
    """The request body (a generator of 1 MiB chunks) and headers for one encoding."""
    size = path.stat().st_size
    if mode == "raw":
        return _file_chunks(path), {"content-type": "application/zip", "content-length": str(size)}
    if mode == "chunked":  # httpx sends Transfer-Encoding: chunked for a generator without length
        return _file_chunks(path), {"content-type": "application/zip"}
    if mode == "multipart":
        boundary = uuid.uuid4().hex
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="study.zip"\r\n'
            "Content-Type: application/zip\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        return _file_chunks(path, head, tail), {
            "content-type": f"multipart/form-data; boundary={boundary}",
            "content-length": str(size + len(head) + len(tail)),
        }
    raise ValueError(mode)


# --------------------------------------------------------------------------- upload peers


def peer_s3_direct(env: Env, path: Path) -> dict[str, Any]:
    """The file through Storage.multipart (what the API uses) straight to S3, 1 MiB writes."""
    storage = env.storage()
    key = f"bench/direct-{uuid.uuid4().hex}.zip"
    size = path.stat().st_size
    with CpuMeter({"client": None, "s3": env.s3_pid}) as cpu:
        t0 = time.perf_counter()
        up = storage.multipart(key, "application/zip", part_size=env.settings.upload_part_bytes)
        for chunk in _file_chunks(path):
            up.write(chunk)
        up.complete()
        dt = time.perf_counter() - t0
    storage.delete(key)
    return {"seconds": dt, "mb_s": size / dt / 1e6, "cpu_s": cpu.used}


def peer_s3_boto3_threads(env: Env, path: Path, threads: int = 2) -> dict[str, Any]:
    """boto3's own managed upload of the file, same part size, ``threads`` parts in flight."""
    from boto3.s3.transfer import TransferConfig

    storage = env.storage()
    key = f"bench/boto3-{uuid.uuid4().hex}.zip"
    part = env.settings.upload_part_bytes
    cfg = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=threads)
    size = path.stat().st_size
    with CpuMeter({"client": None, "s3": env.s3_pid}) as cpu:
        t0 = time.perf_counter()
        storage.client.upload_file(str(path), storage.bucket, key, Config=cfg)
        dt = time.perf_counter() - t0
    storage.delete(key)
    return {"seconds": dt, "mb_s": size / dt / 1e6, "cpu_s": cpu.used, "threads": threads}


def peer_loopback(path: Path) -> dict[str, Any]:
    """A raw TCP copy of the file over loopback (sendfile → recv_into): the machine's ceiling."""
    size = path.stat().st_size
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    got = [0]

    def sink() -> None:
        conn, _ = srv.accept()
        buf = bytearray(CHUNK)
        with conn:
            while n := conn.recv_into(buf):
                got[0] += n

    t = threading.Thread(target=sink, daemon=True)
    t.start()
    with CpuMeter({"client": None}) as cpu:
        t0 = time.perf_counter()
        with socket.create_connection(srv.getsockname()) as c, path.open("rb") as f:
            c.sendfile(f)
        t.join()
        dt = time.perf_counter() - t0
    srv.close()
    assert got[0] == size, (got[0], size)
    return {"seconds": dt, "mb_s": size / dt / 1e6, "cpu_s": cpu.used}


async def sink_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A minimal ASGI app: reads the whole body, discards it, answers its length."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    n, more = 0, True
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        n += len(msg.get("body", b""))
        more = msg.get("more_body", False)
    body = json.dumps({"bytes": n}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve_sink(port: int) -> int:
    import uvicorn

    from app.api.server import uvicorn_config
    from app.config import Settings

    # the server the API runs (h11 with the edge's header deadline), without the API
    uvicorn.Server(uvicorn_config(sink_app, Settings(), host="127.0.0.1", port=port)).run()
    return 0


def timed_upload(
    url: str,
    path: Path,
    mode: str,
    headers: dict[str, str],
    pids: dict[str, int | None],
    rss_pid: int | None,
) -> dict[str, Any]:
    """One upload with httpx (sync) from the file; MB/s, CPU per process, RSS growth of ``rss_pid``."""
    size = path.stat().st_size
    body, hdrs = upload_body(path, mode)
    sampler = RssSampler(rss_pid) if rss_pid is not None else contextlib.nullcontext()
    with httpx.Client(timeout=600.0, headers=headers) as c, CpuMeter(pids) as cpu, sampler as rss:
        t0 = time.perf_counter()
        r = c.post(url, content=body, headers=hdrs)
        dt = time.perf_counter() - t0
    if r.status_code not in (200, 201):
        raise RuntimeError(f"upload ({mode}) answered {r.status_code}: {r.text[:500]}")
    out: dict[str, Any] = {"mode": mode, "seconds": dt, "mb_s": size / dt / 1e6, "cpu_s": cpu.used}
    out["response"] = r.json()
    if isinstance(rss, RssSampler):
        out["rss_baseline_mib"] = rss.baseline / MiB
        out["rss_peak_mib"] = rss.peak / MiB
        out["rss_end_mib"] = rss.end / MiB
        out["rss_growth_mib"] = rss.growth / MiB
        out["rss_samples"] = rss.samples
    return out


def section_upload(env: Env, api: Api, tmp: Path, size_mib: int, modes: list[str]) -> dict[str, Any]:
    print(f"\n== 1. upload: {size_mib} MiB ZIP (ZIP_STORED random members) ==", flush=True)
    path = tmp / "big.zip"
    t0 = time.perf_counter()
    size = build_zip(path, size_mib * MiB)
    print(f"built {path.name}: {size / MiB:.1f} MiB in {time.perf_counter() - t0:.1f} s", flush=True)
    sha = hashlib.sha256()
    for chunk in _file_chunks(path):  # also leaves the file in the page cache for every run
        sha.update(chunk)
    auth = {"Authorization": f"Bearer {env.key}"}
    res: dict[str, Any] = {"size_bytes": size, "sha256": sha.hexdigest(), "peers": {}, "service": {}}

    small = tmp / "warmup.zip"
    build_zip(small, 2 * MiB, member_size=MiB, seed=1)

    # peers
    res["peers"]["loopback_copy"] = peer_loopback(path)
    res["peers"]["s3_direct"] = peer_s3_direct(env, path)
    res["peers"]["s3_boto3_2_threads"] = peer_s3_boto3_threads(env, path, 2)
    sink_port = _free_port()
    sink = Child(
        "sink",
        [sys.executable, str(Path(__file__).resolve()), "--serve-sink", str(sink_port)],
        env.child_env(),
        env.dir / "sink.log",
    )
    try:
        url = f"http://127.0.0.1:{sink_port}/"
        _wait_http(url, sink.proc, sink.log)
        timed_upload(url, small, "raw", {}, {}, None)  # warm-up
        r = timed_upload(url, path, "raw", {}, {"client": None, "sink": sink.pid}, sink.pid)
        assert r["response"]["bytes"] == size
        res["peers"]["uvicorn_sink"] = r
    finally:
        sink.stop()

    # the service: warm-up with a small upload (imports, pools, first S3 connection), then each mode
    pids = {"client": None, "api": api.pid, "s3": env.s3_pid}
    with api.client() as c:
        for mode in modes:
            w = timed_upload(f"{api.base}/v1/studies", small, mode, auth, {}, None)
            c.delete(f"/v1/studies/{w['response']['study_id']}")
        for mode in modes:
            r = timed_upload(f"{api.base}/v1/studies", path, mode, auth, pids, api.pid)
            if r["response"].get("sha256") != res["sha256"] or r["response"].get("size_bytes") != size:
                raise RuntimeError(f"upload ({mode}): wrong sha256/size in {r['response']}")
            d = c.delete(f"/v1/studies/{r['response']['study_id']}")
            if d.status_code != 204:
                raise RuntimeError(f"DELETE study answered {d.status_code}")
            res["service"][mode] = r
            print(
                f"  service {mode:<9} {r['mb_s']:7.1f} MB/s  RSS +{r['rss_growth_mib']:.1f} MiB",
                flush=True,
            )
    path.unlink()
    return res


def report_upload(res: dict[str, Any]) -> list[tuple[str, bool, str]]:
    size = res["size_bytes"]
    peers = res["peers"]
    print(
        f"\nupload of {size / MiB:.0f} MiB, MB/s = 10^6 B/s; CPU seconds during the run of the server "
        "(API or sink), S3 (weed), client (this process) and everything else on the machine"
    )
    hdr = (
        f"{'path':<36} {'s':>6} {'MB/s':>7} {'cpu srv':>7} {'cpu s3':>7} {'cpu cli':>7} {'other':>6} "
        f"{'RSS +MiB':>9} {'÷ s3 direct':>11} {'÷ uvicorn sink':>14}"
    )
    print(hdr)
    print("-" * len(hdr))

    def row(name: str, r: dict[str, Any], ratios: bool) -> None:
        cpu: dict[str, float] = r["cpu_s"]

        def f(k: str) -> str:
            return f"{cpu[k]:.2f}" if k in cpu else "-"

        api_cpu = f("api") if "api" in cpu else f("sink")
        named = sum(v for k, v in cpu.items() if k != "machine")
        other = f"{max(0.0, cpu['machine'] - named):.2f}" if "machine" in cpu else "-"
        rss = f"{r['rss_growth_mib']:.1f}" if "rss_growth_mib" in r else "-"
        q1 = f"{r['mb_s'] / peers['s3_direct']['mb_s']:.2f}" if ratios else "-"
        q2 = f"{r['mb_s'] / peers['uvicorn_sink']['mb_s']:.2f}" if ratios else "-"
        print(
            f"{name:<36} {r['seconds']:>6.2f} {r['mb_s']:>7.1f} {api_cpu:>7} {f('s3'):>7} "
            f"{f('client'):>7} {other:>6} {rss:>9} {q1:>11} {q2:>14}"
        )

    row("peer: loopback socket copy", peers["loopback_copy"], False)
    row("peer: Storage.multipart → S3", peers["s3_direct"], False)
    row("peer: boto3 2 parts in flight", peers["s3_boto3_2_threads"], False)
    row("peer: httpx → uvicorn sink", peers["uvicorn_sink"], False)
    for mode, r in res["service"].items():
        row(f"service POST /v1/studies {mode}", r, True)
    goals = []
    for mode, r in res["service"].items():
        goals.append(
            (
                f"upload {mode}: ≥ {GOAL_UPLOAD_MBPS:.0f} MB/s",
                r["mb_s"] >= GOAL_UPLOAD_MBPS,
                f"{r['mb_s']:.1f} MB/s",
            )
        )
        goals.append(
            (
                f"upload {mode}: API RSS growth ≤ {GOAL_UPLOAD_RSS_MIB:.0f} MiB",
                r["rss_growth_mib"] <= GOAL_UPLOAD_RSS_MIB,
                f"+{r['rss_growth_mib']:.1f} MiB (baseline {r['rss_baseline_mib']:.0f} MiB)",
            )
        )
    return goals


# --------------------------------------------------------------------------- open-loop load


class _Pool:
    """Keep-alive HTTP/1.1 connections, most recently used first (LIFO keeps few of them hot).

    An idle connection is dropped instead of reused when the server has closed it or when it
    has idled longer than ``IDLE_MAX_S`` (uvicorn closes idle keep-alive connections after 5 s).
    """

    IDLE_MAX_S = 3.0

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.opened = 0
        self.max_open = 0
        self.cond = asyncio.Condition()

    async def get(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        loop = asyncio.get_running_loop()
        async with self.cond:
            while True:
                while self.idle:
                    r, w, since = self.idle.pop()
                    if r.at_eof() or w.is_closing() or loop.time() - since > self.IDLE_MAX_S:
                        w.close()
                        self.opened -= 1
                        continue
                    return r, w, True
                if self.opened < self.limit:
                    break
                await self.cond.wait()
            self.opened += 1
            self.max_open = max(self.max_open, self.opened)
        try:
            r, w = await asyncio.open_connection(self.host, self.port)
        except BaseException:
            await self.discard(None)
            raise
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return r, w, False

    async def put(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        async with self.cond:
            self.idle.append((r, w, asyncio.get_running_loop().time()))
            self.cond.notify()

    async def discard(self, w: asyncio.StreamWriter | None) -> None:
        if w is not None:
            w.close()
        async with self.cond:
            self.opened -= 1
            self.cond.notify()


async def _exchange(r: asyncio.StreamReader, w: asyncio.StreamWriter, req: bytes) -> tuple[int, bool]:
    """Send one request, read the whole response: (status, keep-alive)."""
    w.write(req)
    head = await r.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, keep = 0, True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
    if length:
        await r.readexactly(length)
    return status, keep


async def open_loop(
    url: str, paths: list[str], headers: dict[str, str], rate: float, duration: float, warmup: float
) -> dict[str, Any]:
    """Requests scheduled at ``rate``/s on a fixed timeline; latency from the scheduled time."""
    u = httpx.URL(url)
    host, port = u.host, u.port or 80
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    reqs = [f"GET {p} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode() for p in paths]
    pool = _Pool(host, port, limit=256)
    loop = asyncio.get_running_loop()
    n_warm, n = int(rate * warmup), int(rate * duration)
    lat: list[float] = []
    lag: list[float] = []
    ends: list[float] = []
    errors: dict[str, int] = {}

    async def one(i: int, sched: float) -> None:
        req = reqs[i % len(reqs)]
        status = 0
        try:
            for attempt in range(3):  # a reused keep-alive connection may have been closed by the server
                r, w, reused = await pool.get()
                sent = loop.time()
                try:
                    status, keep = await asyncio.wait_for(_exchange(r, w, req), 10.0)
                except (ConnectionError, asyncio.IncompleteReadError) as e:
                    await pool.discard(w)
                    if reused and attempt < 2:
                        continue
                    raise e
                except BaseException:
                    await pool.discard(w)
                    raise
                if keep:
                    await pool.put(r, w)
                else:
                    await pool.discard(w)
                break
        except Exception as e:
            if i >= n_warm:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            return
        done = loop.time()
        if i < n_warm:
            return
        if status != 200:
            errors[f"http_{status}"] = errors.get(f"http_{status}", 0) + 1
            return
        lat.append(done - sched)
        lag.append(sent - sched)
        ends.append(done)

    tasks: list[asyncio.Task[None]] = []
    t0 = loop.time() + 0.1
    for i in range(n_warm + n):
        sched = t0 + i / rate
        delay = sched - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, sched)))
    await asyncio.gather(*tasks)
    for _, w_, _ in pool.idle:
        w_.close()
    start = t0 + n_warm / rate
    window = (max(ends) - start) if ends else float("nan")
    return {
        "rate_target": rate,
        "duration_s": duration,
        "warmup_s": warmup,
        "sent": n,
        "requests_total": n_warm + n,
        "ok": len(lat),
        "errors": errors,
        "error_count": sum(errors.values()),
        "achieved_rps": len(lat) / window if ends else 0.0,
        "connections_max": pool.max_open,
        "latency_ms": _percentiles([x * 1e3 for x in lat]),
        "client_lag_ms": _percentiles([x * 1e3 for x in lag]),
    }


def _percentiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {k: float("nan") for k in ("p50", "p90", "p99", "max", "mean")}
    p = percentiles(xs, (0.50, 0.90, 0.99))
    return {"p50": p["p50"], "p90": p["p90"], "p99": p["p99"], "max": p["max"], "mean": statistics.fmean(xs)}


async def closed_loop(
    url: str, paths: list[str], headers: dict[str, str], concurrency: int, duration: float, warmup: float
) -> dict[str, Any]:
    """``concurrency`` connections each sending its next request as soon as the last answered:
    the most the server can do (its capacity), with latency from the send time."""
    u = httpx.URL(url)
    host, port = u.host, u.port or 80
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    reqs = [f"GET {p} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode() for p in paths]
    loop = asyncio.get_running_loop()
    t_measure = loop.time() + warmup
    t_end = t_measure + duration
    lat: list[float] = []
    errors: dict[str, int] = {}
    total = [0]

    async def client(k: int) -> None:
        r, w = await asyncio.open_connection(host, port)
        i = k
        try:
            while (t0 := loop.time()) < t_end:
                status, keep = await asyncio.wait_for(_exchange(r, w, reqs[i % len(reqs)]), 10.0)
                i += concurrency
                total[0] += 1
                if t0 >= t_measure:
                    if status == 200:
                        lat.append(loop.time() - t0)
                    else:
                        errors[f"http_{status}"] = errors.get(f"http_{status}", 0) + 1
                if not keep:
                    w.close()
                    r, w = await asyncio.open_connection(host, port)
        finally:
            w.close()

    results = await asyncio.gather(*(client(k) for k in range(concurrency)), return_exceptions=True)
    for e in results:
        if isinstance(e, BaseException):
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
    return {
        "concurrency": concurrency,
        "duration_s": duration,
        "requests_total": total[0],
        "ok": len(lat),
        "errors": errors,
        "error_count": sum(errors.values()),
        "achieved_rps": len(lat) / duration,
        "latency_ms": _percentiles([x * 1e3 for x in lat]),
    }


def run_load(args_json: str) -> int:
    a = json.loads(args_json)
    if a.get("concurrency"):
        coro = closed_loop(a["url"], a["paths"], a["headers"], a["concurrency"], a["duration"], a["warmup"])
    else:
        coro = open_loop(a["url"], a["paths"], a["headers"], a["rate"], a["duration"], a["warmup"])
    print(json.dumps(asyncio.run(coro)))
    return 0


def load_process(
    api: Api,
    paths: list[str],
    rate: float,
    duration: float,
    warmup: float,
    pg_pid: int | None,
    concurrency: int = 0,
) -> dict[str, Any]:
    """The load generator in its own process (open loop at ``rate``, or closed loop with
    ``concurrency`` connections); CPU use of API, PostgreSQL, load generator, machine."""
    spec = {
        "url": api.base,
        "paths": paths,
        "headers": {"Authorization": f"Bearer {api.env.key}"},
        "rate": rate,
        "duration": duration,
        "warmup": warmup,
        "concurrency": concurrency,
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--load-gen", json.dumps(spec)]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    pg0 = tree_cpu_seconds(pg_pid) if pg_pid else float("nan")
    with CpuMeter({"api": api.pid}) as cpu:
        t0 = time.perf_counter()
        limit = duration + warmup + 120
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=limit)
        wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    res: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    load_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    res["cpu_util"] = {  # fraction of one core over the load generator's whole run (warm-up included)
        "api": cpu.used["api"] / wall,
        "postgres": ((tree_cpu_seconds(pg_pid) - pg0) / wall) if pg_pid else float("nan"),
        "load_generator": load_cpu / wall,
        "machine": cpu.used["machine"] / wall,
    }
    named = ("api", "postgres", "load_generator")
    res["cpu_util"]["other"] = res["cpu_util"]["machine"] - sum(res["cpu_util"][k] for k in named)
    res["api_cpu_util"] = res["cpu_util"]["api"]
    res["api_cpu_ms_per_request"] = cpu.used["api"] / max(1, res["requests_total"]) * 1e3
    return res


def wait_quiet(max_cores: float = 0.3, hold_s: float = 3.0, timeout_s: float = 90.0) -> float:
    """Wait until the whole machine keeps fewer than ``max_cores`` busy for ``hold_s`` (a freshly
    started SeaweedFS, or one digesting gigabytes just written, holds most of a core for a while:
    that would be measured as API latency). Returns the seconds waited (``timeout_s`` at most)."""
    t0 = time.monotonic()
    quiet_since = t0
    while time.monotonic() - t0 < timeout_s:
        m0 = machine_busy_seconds()
        time.sleep(0.5)
        if (machine_busy_seconds() - m0) / 0.5 > max_cores:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= hold_s:
            break
    return time.monotonic() - t0


def section_latency(
    env: Env, api: Api, rate: float, duration: float, warmup: float, pg_pid: int | None
) -> dict[str, Any]:
    from ml.phantom import make_study

    print(f"\n== 2. GET /v1/jobs/{{id}} at {rate:g} rps for {duration:g} s (open loop) ==", flush=True)
    waited = wait_quiet()
    print(f"machine quiet after {waited:.1f} s", flush=True)
    z = env.dir / "latency-study.zip"
    make_study(z, seed=123)
    with api.service_client() as c:
        sid = _upload(c, z)
        jobs = [_submit(c, sid, "none") for _ in range(5)]
        st = c.get_job(jobs[-1])
    print(f"5 jobs queued (last: state {st['state']}, queue position {st['queue_position']})", flush=True)
    paths = {"jobs": [f"/v1/jobs/{j}" for j in jobs], "healthz": ["/healthz"]}
    res: dict[str, Any] = {
        "jobs": load_process(api, paths["jobs"], rate, duration, warmup, pg_pid),
        "healthz": load_process(api, paths["healthz"], rate, duration, warmup, pg_pid),
    }
    cap_s = min(5.0, max(1.0, duration / 4))
    res["capacity"] = {
        name: load_process(api, p, 0.0, cap_s, min(1.0, warmup), pg_pid, concurrency=CAPACITY_CONNECTIONS)
        for name, p in paths.items()
    }
    return res


def report_latency(res: dict[str, Any]) -> list[tuple[str, bool, str]]:
    rate = res["jobs"]["rate_target"]
    print(
        f"\nopen-loop GET at {rate:g} rps, {res['jobs']['duration_s']:g} s after "
        f"{res['jobs']['warmup_s']:g} s warm-up; latency from the scheduled send time (ms)"
    )
    print(
        "CPU: % of one core over the run (API process, PostgreSQL backends, load generator, everything "
        f"else on the {os.cpu_count()}-CPU machine); lag p99 = scheduled → sent (waiting for a connection)"
    )
    hdr = (
        f"{'route':<18} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>8} {'rps':>6} {'err':>4} "
        f"{'conns':>5} {'api':>5} {'pg':>5} {'load':>5} {'other':>5} {'lag p99':>8} {'API ms/req':>10}"
    )
    print(hdr)
    print("-" * len(hdr))
    for name, r in (("GET /healthz", res["healthz"]), ("GET /v1/jobs/{id}", res["jobs"])):
        lat, cpu = r["latency_ms"], r["cpu_util"]
        pct = " ".join(f"{cpu[k] * 100:>4.0f}%" for k in ("api", "postgres", "load_generator", "machine"))
        print(
            f"{name:<18} {lat['p50']:>7.2f} {lat['p90']:>7.2f} {lat['p99']:>7.2f} {lat['max']:>8.1f} "
            f"{r['achieved_rps']:>6.0f} {r['error_count']:>4} {r['connections_max']:>5} {pct} "
            f"{r['client_lag_ms']['p99']:>8.1f} {r['api_cpu_ms_per_request']:>10.2f}"
        )
    for name, route in (("GET /healthz", "healthz"), ("GET /v1/jobs/{id}", "jobs")):
        cap = res["capacity"][route]
        print(
            f"capacity of {name:<18} {cap['achieved_rps']:6.0f} rps (closed loop, {cap['concurrency']} "
            f"connections, {cap['duration_s']:g} s; p50 {cap['latency_ms']['p50']:.1f} ms; "
            f"API CPU {cap['api_cpu_ms_per_request']:.2f} ms/request): "
            f"{rate:g} rps is {rate / max(cap['achieved_rps'], 1e-9) * 100:.0f}% of it"
        )
    ratio = res["jobs"]["latency_ms"]["p99"] / res["healthz"]["latency_ms"]["p99"]
    res["p99_jobs_over_healthz"] = ratio
    print(f"p99 jobs / p99 healthz = {ratio:.2f}")
    j = res["jobs"]
    ok = j["latency_ms"]["p99"] <= GOAL_P99_MS and j["error_count"] == 0
    return [
        (
            f"GET /v1/jobs/{{id}} p99 ≤ {GOAL_P99_MS:.0f} ms at {rate:g} rps, no errors",
            ok,
            f"p99 {j['latency_ms']['p99']:.2f} ms, {j['error_count']} errors, {j['achieved_rps']:.0f} rps",
        )
    ]


# --------------------------------------------------------------------------- end to end


def phantom(cache: Path, seed: int, variant: str = "standard") -> Path:
    from ml.phantom import make_study

    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"service_phantom_{variant}_seed{seed}.zip"
    if not path.is_file():
        tmp = cache / f".{path.name}.{os.getpid()}.tmp"
        make_study(tmp, seed=seed, variant=variant)
        os.replace(tmp, path)
    return path


def _upload(c: Service4CTClient, path: Path) -> str:
    """Upload a study ZIP (streamed from the file, raw body) with the typed client: its id."""
    return c.upload_study(path)["study_id"]


def _submit(c: Service4CTClient, study_id: str, explain: str) -> str:
    return c.predict(study_id, explain=explain)["job_id"]


def _wait_jobs(c: Service4CTClient, job_ids: list[str], timeout: float = 600.0) -> dict[str, dict[str, Any]]:
    """Poll every 25 ms until each job is terminal: {job_id: status body + 'observed_at'}."""
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(job_ids):
        for jid in job_ids:
            if jid in done:
                continue
            body: dict[str, Any] = dict(c.get_job(jid))
            if body["state"] in ("succeeded", "failed"):
                body["observed_at"] = time.perf_counter()
                if body["state"] == "failed":
                    raise RuntimeError(f"job {jid} failed: {body.get('error')}")
                done[jid] = body
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs not finished after {timeout:.0f} s")
        time.sleep(0.025)
    return done


def _one_study(c: Service4CTClient, path: Path, explain: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    sid = _upload(c, path)
    t1 = time.perf_counter()
    jid = _submit(c, sid, explain)
    body = _wait_jobs(c, [jid])[jid]
    t2 = body["observed_at"]
    return {
        "study_id": sid,
        "job_id": jid,
        "explain": explain,
        "total_s": t2 - t0,
        "upload_s": t1 - t0,
        "job_s": t2 - t1,
        "stages": body.get("stage_timings") or {},
    }


def _queued(c: Service4CTClient, study_ids: list[str], explain: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    jobs = [_submit(c, s, explain) for s in study_ids]
    done = _wait_jobs(c, jobs)
    wall = max(b["observed_at"] for b in done.values()) - t0
    return {
        "explain": explain,
        "n": len(jobs),
        "wall_s": wall,
        "studies_per_min": len(jobs) / wall * 60,
        "stages": [b.get("stage_timings") or {} for b in done.values()],
    }


def _stage_medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in STAGES:
        vals = [float(r[k]) for r in runs if k in r]
        if vals:
            out[k] = statistics.median(vals)
    return out


def start_worker(env: Env, api: Api, timeout: float = 300.0) -> tuple[Child, float]:
    """A worker process (``python -m app.worker``) on ``env``, and the seconds until ``/readyz`` said 200."""
    worker = Child("worker", [sys.executable, "-m", "app.worker"], env.child_env(), env.dir / "worker.log")
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    try:
        with api.client() as c:
            while c.get("/readyz").status_code != 200:
                if worker.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker not ready\n{_tail(worker.log)}")
                time.sleep(0.1)
    except BaseException:
        worker.stop(timeout=40)
        raise
    return worker, time.perf_counter() - t0


def section_e2e(env: Env, api: Api, n: int, real_like: bool, cache: Path) -> dict[str, Any]:
    print(f"\n== 3. end to end: {n} phantom studies per pass, demo model on CPU ==", flush=True)
    t0 = time.perf_counter()
    small = [phantom(cache, 1000 + i) for i in range(n)]
    big = phantom(cache, 0, "real_like") if real_like else None
    print(f"phantoms ready in {time.perf_counter() - t0:.1f} s", flush=True)
    res: dict[str, Any] = {"n": n, "sequential": {}, "queued": {}}
    worker, res["worker_ready_s"] = start_worker(env, api)
    try:
        with api.service_client() as c:
            res["first_job"] = _one_study(c, small[0], "gradcam")  # cold: pool process, captum imports
            print(
                f"worker ready in {res['worker_ready_s']:.1f} s; first (cold) job "
                f"{res['first_job']['job_s']:.2f} s",
                flush=True,
            )
            for explain in ("gradcam", "none"):
                runs = [_one_study(c, p, explain) for p in small]
                res["sequential"][explain] = {
                    "runs": runs,
                    "total_s_median": statistics.median(r["total_s"] for r in runs),
                    "upload_s_median": statistics.median(r["upload_s"] for r in runs),
                    "job_s_median": statistics.median(r["job_s"] for r in runs),
                    "studies_per_min": len(runs) / sum(r["job_s"] for r in runs) * 60,
                    "stages_median": _stage_medians([r["stages"] for r in runs]),
                }
                print(
                    f"  sequential {explain:<8} {res['sequential'][explain]['total_s_median']:.2f} s/study",
                    flush=True,
                )
                ids = [r["study_id"] for r in runs]
                q = _queued(c, ids, explain)
                q["stages_median"] = _stage_medians(q.pop("stages"))
                res["queued"][explain] = q
                print(f"  queued     {explain:<8} {q['studies_per_min']:.1f} studies/min", flush=True)
            if big is not None:
                res["real_like"] = {}
                for explain in ("gradcam", "none"):
                    r = _one_study(c, big, explain)
                    res["real_like"][explain] = r
                    print(f"  real_like  {explain:<8} {r['total_s']:.2f} s", flush=True)
    finally:
        worker.stop(timeout=40)
    return res


def report_e2e(res: dict[str, Any]) -> list[tuple[str, bool, str]]:
    print(
        f"\nend to end, seconds (medians over {res['n']} small phantom studies; "
        "stages from the job's stage_timings)"
    )
    cols: list[tuple[str, dict[str, Any], dict[str, float]]] = []
    for explain in ("gradcam", "none"):
        s = res["sequential"][explain]
        cols.append((f"seq {explain}", s, s["stages_median"]))
    for explain in ("gradcam", "none"):
        q = res["queued"][explain]
        cols.append((f"queued {explain}", q, q["stages_median"]))
    for explain, r in res.get("real_like", {}).items():
        cols.append((f"512² {explain}", r, r["stages"]))
    print(f"{'':<22}" + "".join(f"{name:>15}" for name, _, _ in cols))
    lines = [
        ("upload (client)", "upload_s_median", "upload_s"),
        ("job (POST → done)", "job_s_median", "job_s"),
    ]
    lines.insert(0, ("study (upload → done)", "total_s_median", "total_s"))
    for label, k1, k2 in lines:
        vals = [c[1].get(k1, c[1].get(k2)) for c in cols]
        print(f"{label:<22}" + "".join(f"{v:>15.3f}" if v is not None else f"{'-':>15}" for v in vals))
    for k in STAGES:
        vals = [c[2].get(k) for c in cols]
        if all(v is None for v in vals):
            continue
        label = f"  {k}" if k != "total" else "  total (worker)"
        print(f"{label:<22}" + "".join(f"{v:>15.3f}" if v is not None else f"{'-':>15}" for v in vals))
    print("\nthroughput (job time only; uploads done beforehand for the queued pass)")
    for explain in ("gradcam", "none"):
        s, q = res["sequential"][explain], res["queued"][explain]
        gain = q["studies_per_min"] / s["studies_per_min"]
        q["gain_over_sequential"] = gain
        print(
            f"  {explain:<8} sequential {s['studies_per_min']:6.1f}/min   {q['n']} queued at once "
            f"{q['studies_per_min']:6.1f}/min   queued ÷ sequential = {gain:.2f}"
        )
    fj = res["first_job"]
    print(f"worker ready {res['worker_ready_s']:.1f} s after start; first (cold) job {fj['job_s']:.2f} s")
    return []


# --------------------------------------------------------------------------- driver


def bench_setup() -> float:
    """Quiet the service's logs, make SIGTERM unwind like Ctrl-C (so every ``finally`` stops
    what it started) and return how many cores other processes kept busy over one second."""
    from app.logs import logger

    logger.remove()  # the embedded stack's info lines would interleave with the tables
    logger.add(sys.stderr, level="WARNING")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    m0 = machine_busy_seconds()
    time.sleep(1.0)
    background = machine_busy_seconds() - m0
    print(f"machine: {os.cpu_count()} CPUs, {background:.2f} cores busy before the run", flush=True)
    if background > 0.2:
        print("warning: other processes are using the CPUs: numbers will be low and noisy", flush=True)
    return background


def start_stack(es: contextlib.ExitStack, root: Path, s3_memory_limit: str | None = None) -> Any:
    """The embedded stack under ``root`` (fsync off, no persistence), stopped when ``es`` closes."""
    from app.devstack import EmbeddedS3, EmbeddedStack

    stack = EmbeddedStack(root, fsync=False, persist=False)
    if s3_memory_limit:  # start() keeps an S3 set beforehand
        stack.s3 = EmbeddedS3(
            root / "s3",
            access_key="BENCH" + secrets.token_hex(8).upper(),
            secret_key=secrets.token_urlsafe(30),
            memory_limit=s3_memory_limit,
        )
    es.callback(stack.stop)
    stack.start()
    print(f"embedded stack ready in {stack.start_seconds:.1f} s", flush=True)
    return stack


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 MiB upload, 100 rps for 3 s, 2 studies")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma list of upload,latency,e2e")
    p.add_argument("--upload-mib", type=int, default=None, help="ZIP size (default 1024, quick 64)")
    p.add_argument(
        "--upload-modes", default="raw,chunked,multipart", help="comma list of raw,chunked,multipart"
    )
    p.add_argument("--rate", type=float, default=None, help="requests/s (default 500, quick 100)")
    p.add_argument("--duration", type=float, default=None, help="measured seconds (default 20, quick 3)")
    p.add_argument(
        "--warmup", type=float, default=None, help="unrecorded seconds first (default 2, quick 0.5)"
    )
    p.add_argument("--studies", type=int, default=None, help="studies per e2e pass (default 6, quick 2)")
    p.add_argument("--no-real-like", action="store_true", help="leave the 512² real_like study out")
    p.add_argument(
        "--s3-memory-limit",
        default=None,
        help="GOMEMLIMIT of the embedded SeaweedFS (default: app.devstack.s3's own, 1GiB)",
    )
    p.add_argument("--cache-dir", default=str(ROOT / "var" / "bench"), help="phantom ZIP cache")
    p.add_argument("--json", default=str(ROOT / "var" / "bench" / "service.json"), help="'' = none")
    p.add_argument("--serve-sink", type=int, help=argparse.SUPPRESS)
    p.add_argument("--load-gen", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_sink:
        return serve_sink(args.serve_sink)
    if args.load_gen:
        return run_load(args.load_gen)

    q = args.quick
    size_mib = args.upload_mib or (64 if q else 1024)
    rate = args.rate or (100.0 if q else 500.0)
    duration = args.duration or (3.0 if q else 20.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if q else 2.0)
    n = args.studies or (2 if q else 6)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    modes = [m.strip() for m in args.upload_modes.split(",") if m.strip()]
    if bad := [s for s in sections if s not in SECTIONS]:
        p.error(f"unknown sections {bad}")
    if bad := [m for m in modes if m not in ("raw", "chunked", "multipart")]:
        p.error(f"unknown upload modes {bad}")

    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "params": {
            "quick": q,
            "upload_mib": size_mib,
            "rate": rate,
            "duration_s": duration,
            "warmup_s": warmup,
            "studies": n,
            "sections": sections,
            "s3_memory_limit": args.s3_memory_limit or "default",
        },
    }
    goals: list[tuple[str, bool, str]] = []
    report["machine"]["background_cores_busy_before"] = bench_setup()
    with tempfile.TemporaryDirectory(prefix="s4ct-bench-svc-") as td, contextlib.ExitStack() as es:
        tmp = Path(td)
        stack = start_stack(es, tmp / "stack", args.s3_memory_limit)
        if "upload" in sections or "latency" in sections:
            with api_on(stack, tmp, "a") as (env, api):
                if "upload" in sections:
                    report["upload"] = section_upload(env, api, tmp, size_mib, modes)
                if "latency" in sections:
                    report["latency"] = section_latency(env, api, rate, duration, warmup, stack.postgres.pid)
        if "e2e" in sections:
            with api_on(stack, tmp, "e") as (env, api):
                report["e2e"] = section_e2e(env, api, n, not args.no_real_like, Path(args.cache_dir))

    print("\n" + "=" * 100)
    if "upload" in report:
        goals += report_upload(report["upload"])
    if "latency" in report:
        goals += report_latency(report["latency"])
    if "e2e" in report:
        goals += report_e2e(report["e2e"])
    report["wall_s"] = time.perf_counter() - t_start
    report["goals"] = [{"goal": g, "pass": ok, "measured": m} for g, ok, m in goals]
    if goals:
        print("\ngoals")
        for g, ok, m in goals:
            print(f"  {'PASS' if ok else 'MISS'}  {g:<52} {m}")
    print(f"\nbench wall time {report['wall_s']:.0f} s")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
