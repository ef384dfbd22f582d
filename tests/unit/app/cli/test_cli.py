"""The `service4ct` command itself: every command listed, offline ones first, as before the split."""

from __future__ import annotations

import re

from cli import run_cli

COMMANDS = [
    "inspect",
    "preprocess",
    "phantom",
    "train",
    "retune",
    "evaluate",
    "fit-ood",
    "drift-reference",
    "predict",
    "serve",
    "api",
    "worker",
    "migrate",
    "audit",
    "performance",
    "apikey",
    "client",
    "dicomweb",
]


def test_help_lists_every_command_in_order() -> None:
    r = run_cli("--help")
    assert r.returncode == 0, r.stderr
    listed = re.findall(r"^│ (\w[\w-]*) ", r.stdout, flags=re.MULTILINE)
    assert listed == COMMANDS
    r = run_cli("apikey", "--help")
    assert r.returncode == 0 and re.findall(r"^│ (\w+) ", r.stdout, flags=re.MULTILINE) == [
        "create",
        "list",
        "revoke",
    ]
    r = run_cli("dicomweb", "--help")
    assert r.returncode == 0 and re.findall(r"^│ (\w+) ", r.stdout, flags=re.MULTILINE) == [
        "add",
        "remove",
        "list",
    ]
