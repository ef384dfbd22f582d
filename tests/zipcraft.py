"""Hand-built ZIP archives for hostile-input tests (overlapping members, lying headers)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence


def raw_zip(
    members: Sequence[tuple[str, bytes]],
    *,
    central: Sequence[tuple[str, int]] | None = None,
    declared_sizes: dict[str, int] | None = None,
    flags: int = 0,
) -> bytes:
    """Build a ZIP (stored, no compression) byte by byte.

    ``central`` lists (name, index of the local member it points to); by default
    each member is listed once. Pointing two names at the same local member makes
    overlapping entries. ``flags`` sets the general-purpose bits (1 = encrypted).
    ``declared_sizes`` overrides the uncompressed size written in the headers.
    """
    declared_sizes = declared_sizes or {}
    body = b""
    offsets: list[tuple[int, str, bytes]] = []
    for name, data in members:
        nb = name.encode()
        size = declared_sizes.get(name, len(data))
        crc = zlib.crc32(data)
        offsets.append((len(body), name, data))
        body += struct.pack(
            "<4sHHHHHIIIHH", b"PK\x03\x04", 20, flags, 0, 0, 0, crc, len(data), size, len(nb), 0
        )
        body += nb + data
    cd = b""
    entries = central if central is not None else [(n, i) for i, (n, _) in enumerate(members)]
    for name, idx in entries:
        off, _local_name, data = offsets[idx]
        nb = name.encode()
        size = declared_sizes.get(name, len(data))
        cd += struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            b"PK\x01\x02",
            20,
            20,
            flags,
            0,
            0,
            0,
            zlib.crc32(data),
            len(data),
            size,
            len(nb),
            0,
            0,
            0,
            0,
            0,
            off,
        )
        cd += nb
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(cd), len(body), 0)
    return body + cd + eocd
