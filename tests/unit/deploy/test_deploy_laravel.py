"""deploy/laravel: PHP syntax (when php is installed) and the webhook signature against Python's.

``php`` comes from Debian's php-cli; without it these tests skip.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from s4ct_deploy import ROOT

from app.webhooks import sign

LARAVEL = ROOT / "deploy" / "laravel"
PHP = shutil.which("php")
needs_php = pytest.mark.skipif(PHP is None, reason="php not installed (apt-get install php-cli)")

VERIFY = r"""<?php
namespace App\Http\Controllers { abstract class Controller {} }
namespace {
    require $argv[1];
    $ok = App\Http\Controllers\Service4CTWebhookController::verify(
        $argv[2], file_get_contents('php://stdin'), $argv[3], (int) $argv[4], 300
    );
    echo $ok ? "valid" : "invalid";
}
"""


def php_files() -> list[Path]:
    return sorted(LARAVEL.rglob("*.php"))


def test_the_example_is_complete() -> None:
    names = {p.relative_to(LARAVEL).as_posix() for p in php_files()}
    assert {
        "app/Services/Service4CT/Service4CTClient.php",
        "app/Services/Service4CT/Service4CTException.php",
        "app/Http/Controllers/Service4CTWebhookController.php",
        "app/Jobs/SubmitStudyToService4CT.php",
        "config/service4ct.php",
        "routes/api.php",
    } <= names
    client = (LARAVEL / "app/Services/Service4CT/Service4CTClient.php").read_text()
    for needle in (
        "Idempotency-Key",
        "/v1/studies",
        "/v1/jobs",
        "/result",
        "/explanation",
        "Utils::streamFor",
    ):
        assert needle in client, needle
    job = (LARAVEL / "app/Jobs/SubmitStudyToService4CT.php").read_text()
    assert "implements ShouldQueue" in job and "->uuid()" in job and "function backoff" in job
    readme = (LARAVEL / "README.md").read_text()
    assert readme.startswith("## Laravel integration")


@needs_php
@pytest.mark.parametrize("path", php_files(), ids=lambda p: p.relative_to(LARAVEL).as_posix())
def test_php_syntax(path: Path) -> None:
    assert PHP is not None
    out = subprocess.run([PHP, "-l", str(path)], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "No syntax errors" in out.stdout, out.stdout + out.stderr


@needs_php
def test_php_verifies_what_python_signs(tmp_path: Path) -> None:
    assert PHP is not None
    script = tmp_path / "verify.php"
    script.write_text(VERIFY)
    controller = LARAVEL / "app/Http/Controllers/Service4CTWebhookController.php"
    body = b'{"event":"job.succeeded","job_id":"0f5e","probability":0.93}'
    now = int(time.time())

    def php_verify(secret: str, payload: bytes, header: str, at: int = now) -> str:
        out = subprocess.run(
            [PHP, str(script), str(controller), secret, header, str(at)],
            input=payload,
            check=False,
            capture_output=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.decode()

    header = sign("s3cret", body, now)
    assert php_verify("s3cret", body, header) == "valid"
    assert php_verify("s3cret", body + b" ", header) == "invalid"  # body changed
    assert php_verify("other", body, header) == "invalid"  # wrong secret
    assert php_verify("s3cret", body, header, now + 301) == "invalid"  # too old
    assert php_verify("s3cret", body, sign("s3cret", body, now - 200), now) == "valid"
    assert php_verify("s3cret", body, "v1=" + header.split("v1=")[1]) == "invalid"  # no timestamp
    assert php_verify("s3cret", body, "garbage") == "invalid"
