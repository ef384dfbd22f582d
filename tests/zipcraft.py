"""Hand-built ZIP archives for hostile-input tests (overlapping members, lying headers)."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
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


def zip_of(files: Sequence[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """An ordinary ZIP (the standard library's writer) of ``files``, in memory."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in files:
            zf.writestr(name, data)
    return buf.getvalue()


def zero_bomb(total: int, name: str = "zeros.dcm", chunk: int = 1 << 20) -> bytes:
    """A one-member deflated ZIP expanding to ``total`` zero bytes (≈1 KiB per MiB).

    Streamed through the writer chunk by chunk: the zeros are never held whole,
    so multi-GiB bombs are cheap to build. The central directory tells the truth
    (the ratio check can see it); Zip64 records are used above 2 GiB.
    """
    buf = io.BytesIO()
    zeros = bytes(chunk)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=total > (1 << 31) - 1) as out:
            left = total
            while left > 0:
                n = min(chunk, left)
                out.write(zeros[:n])
                left -= n
    return buf.getvalue()


def symlink_zip(name: str = "link.dcm", target: str = "/etc/passwd") -> bytes:
    """A ZIP whose one member is a Unix symbolic link to ``target``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, target)
    return buf.getvalue()


def many_members(n: int) -> bytes:
    """A stored ZIP of ``n`` empty members (central directory ≈ 50 bytes a member)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            zf.writestr(f"{i}", b"")
    return buf.getvalue()


def nest(data: bytes, levels: int, name: str = "inner.zip") -> bytes:
    """``data`` wrapped in ``levels`` further ZIPs, one member each."""
    for k in range(levels):
        data = zip_of([(f"level{k}/{name}", data)])
    return data


def overlapping(kernel_bytes: int, copies: int) -> bytes:
    """A stored ZIP whose ``copies`` central entries all point at one local member.

    Non-recursive amplification: ``kernel_bytes`` of data declare ``copies`` times
    as much; the ratio of each entry is 1, so only an overlap check catches it.
    """
    kernel = bytes(range(256)) * (kernel_bytes // 256)
    return raw_zip([("k.dcm", kernel)], central=[(f"m{i:06d}.dcm", 0) for i in range(copies)])


def wide_central_directory(entries: int, name_width: int = 7) -> bytes:
    """One tiny stored member listed ``entries`` times by the central directory (≈ 53 bytes an entry).

    Built with a join (``raw_zip`` concatenates, too slow for millions); Zip64 end
    records carry counts above 65535. Refusing it must not cost a ZipInfo per entry.
    """
    data = b"x"
    crc = zlib.crc32(data)
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, 1, 1, 1, 0) + b"k" + data
    fixed = struct.pack("<4sHHHHHHIII", b"PK\x01\x02", 45, 20, 0, 0, 0, 0, crc, 1, 1)
    rest = struct.pack("<HHHHHII", name_width, 0, 0, 0, 0, 0, 0)
    cd = b"".join(fixed + rest + f"{i:0{name_width}d}".encode() for i in range(entries))
    cd_offset, n = len(local), min(entries, 0xFFFF)
    z64 = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, len(cd), cd_offset)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, cd_offset + len(cd), 1)
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n, n, min(len(cd), 0xFFFFFFFF), cd_offset, 0)
    return local + cd + z64 + locator + eocd
