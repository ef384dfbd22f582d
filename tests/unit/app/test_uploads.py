"""Upload helpers of the API process."""

from __future__ import annotations

import pytest


def test_large_buffers_are_mmapped_on_glibc() -> None:
    """The API fixes glibc's mmap threshold (freed 8 MiB upload parts go back to the OS)."""
    import platform

    from app.uploads import mmap_large_buffers

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert mmap_large_buffers() is True
    assert mmap_large_buffers(1 << 20) is True
