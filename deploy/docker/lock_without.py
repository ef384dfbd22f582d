"""Print a hash-locked requirements file without some packages (stdlib only; used by the Dockerfile).

    python lock_without.py torch triton 'nvidia-*' 'cuda-*' < requirements/worker.txt

Each requirement of a ``uv pip compile --generate-hashes`` file is one block: the ``name==version``
line, its ``--hash`` continuation lines and ``# via`` comments; a block whose name matches one of
the patterns (fnmatch, case-insensitive, ``_`` and ``-`` alike) is dropped whole.
"""

from __future__ import annotations

import fnmatch
import re
import sys

_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*==")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def without(text: str, patterns: list[str]) -> str:
    pats = [_norm(p) for p in patterns]
    out: list[str] = []
    dropping = False
    for line in text.splitlines(keepends=True):
        m = _NAME.match(line)
        if m:
            dropping = any(fnmatch.fnmatchcase(_norm(m[1]), p) for p in pats)
        elif not line.startswith((" ", "\t")):
            dropping = False  # a top-level comment or option line ends the block
        if not dropping:
            out.append(line)
    return "".join(out)


if __name__ == "__main__":
    sys.stdout.write(without(sys.stdin.read(), sys.argv[1:]))
