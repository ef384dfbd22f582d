"""deploy/laravel: PHP syntax (when php is installed), the webhook signature against Python's, the app boots.

``php`` comes from Debian's php-cli, the framework from php-laravel-framework (with
php-guzzlehttp-guzzle, php-redis, php-curl); without them these tests skip. The app against the
real service: tests/integration/test_laravel.py (``make test-laravel``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from integration.laravel_app import LaravelApp, missing  # type: ignore[import-not-found, unused-ignore]
from s4ct_deploy import ROOT

from app.webhooks import sign

LARAVEL = ROOT / "deploy" / "laravel"
PHP = shutil.which("php")
needs_php = pytest.mark.skipif(PHP is None, reason="php not installed (apt-get install php-cli)")
WHY_NO_LARAVEL = missing()
needs_laravel = pytest.mark.skipif(WHY_NO_LARAVEL is not None, reason=WHY_NO_LARAVEL or "")

VERIFY = r"""<?php
namespace App\Http\Controllers { abstract class Controller {} }
namespace {
    require $argv[1];
    $ok = App\Http\Controllers\Service4CTWebhookController::verify(
        $argv[2], file_get_contents('php://stdin'), $argv[3], $argv[5], $argv[6], (int) $argv[4], 300
    );
    echo $ok ? "valid" : "invalid";
}
"""


def php_files() -> list[Path]:
    return [*sorted(LARAVEL.rglob("*.php")), LARAVEL / "artisan"]


def test_the_example_is_complete() -> None:
    names = {p.relative_to(LARAVEL).as_posix() for p in php_files()}
    assert {
        "app/Services/Service4CT/Service4CTClient.php",
        "app/Services/Service4CT/Service4CTException.php",
        "app/Http/Controllers/Service4CTWebhookController.php",
        "app/Jobs/SubmitStudyToService4CT.php",
        "app/Listeners/ReadService4CTResult.php",
        "bootstrap/app.php",
        "bootstrap/autoload.php",
        "public/index.php",
        "config/app.php",
        "config/queue.php",
        "config/horizon.php",
        "config/service4ct.php",
        "routes/api.php",
    } <= names
    assert (LARAVEL / "artisan").is_file() and (LARAVEL / "composer.json").is_file()
    client = (LARAVEL / "app/Services/Service4CT/Service4CTClient.php").read_text()
    for needle in (
        "Idempotency-Key",
        "/v1/studies",
        "/v1/jobs",
        "/result",
        "/explanation",
        "Utils::streamFor",
        "/cancel",
        "/series",
        "next_cursor",
        "X-Client-Ref",
        "X-Client-Metadata",
        "'priority'",
        "'client_ref'",
    ):
        assert needle in client, needle
    job = (LARAVEL / "app/Jobs/SubmitStudyToService4CT.php").read_text()
    assert "implements ShouldQueue" in job and "->uuid()" in job and "function backoff" in job
    readme = (LARAVEL / "README.md").read_text()
    assert readme.startswith("## Laravel integration")
    assert "make run" in readme and "horizon" in readme.lower()


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

    delivery, event = "5d0c9a4e-3f1b-4c2a-9e55-1b7f0d2e8a61", "job.succeeded"

    def php_verify(
        secret: str, payload: bytes, header: str, at: int = now, d: str = delivery, e: str = event
    ) -> str:
        out = subprocess.run(
            [PHP, str(script), str(controller), secret, header, str(at), d, e],
            input=payload,
            check=False,
            capture_output=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.decode()

    def signed(secret: str, t: int = now) -> str:
        return sign(secret, body, t, delivery=delivery, event=event)

    header = signed("s3cret")
    assert php_verify("s3cret", body, header) == "valid"
    assert php_verify("s3cret", body + b" ", header) == "invalid"  # body changed
    assert php_verify("other", body, header) == "invalid"  # wrong secret
    assert php_verify("s3cret", body, header, now + 301) == "invalid"  # too old
    assert php_verify("s3cret", body, signed("s3cret", now - 200), now) == "valid"
    assert php_verify("s3cret", body, header, d="another-delivery") == "invalid"  # delivery id swapped
    assert php_verify("s3cret", body, header, e="job.failed") == "invalid"  # event swapped
    assert php_verify("s3cret", body, header, d="") == "invalid"  # no delivery id to deduplicate on
    assert php_verify("s3cret", body, sign("s3cret", body, now)) == "invalid"  # v1 only: not accepted
    assert php_verify("s3cret", body, header.split(",", 1)[1]) == "invalid"  # no timestamp
    assert php_verify("s3cret", body, "garbage") == "invalid"
    # a secret rotation: one v2 per valid secret, either verifies; a third secret does not
    rotating = sign(["n3w", "s3cret"], body, now, delivery=delivery, event=event)
    assert php_verify("s3cret", body, rotating) == "valid"
    assert php_verify("n3w", body, rotating) == "valid"
    assert php_verify("other", body, rotating) == "invalid"
    assert php_verify("n3w", body, f"t={now - 1}," + rotating) == "invalid"  # two timestamps


@needs_laravel
def test_the_app_boots_with_its_route_and_listener(tmp_path: Path) -> None:
    """artisan boots the app: the webhook route, the queued listener, the commands, queue:work."""
    app = LaravelApp(tmp_path, {"SERVICE4CT_API_KEY": "unused"})
    routes = app.artisan("route:list")
    assert routes.returncode == 0, routes.stderr
    assert "api/service4ct/webhook" in routes.stdout and "service4ct.webhook" in routes.stdout
    events = app.artisan("event:list")
    assert "App\\Listeners\\ReadService4CTResult" in events.stdout, events.stdout + events.stderr
    commands = app.artisan("list", "--raw").stdout
    assert {"queue:work", "service4ct:submit", "service4ct:show", "service4ct:list", "service4ct:cancel"} <= {
        c.split()[0] for c in commands.splitlines()
    }


def run_php(source: str, cases: list[Any], tmp_path: Path, env: dict[str, str] | None = None) -> Any:
    """Run the PHP ``source`` with the app directory as its argument and ``cases`` as JSON on stdin."""
    assert PHP is not None
    script = tmp_path / "script.php"
    script.write_text(source)
    # a failure raises, with PHP's errors on the test's stderr
    out = subprocess.check_output(
        [PHP, str(script), str(LARAVEL)], input=json.dumps(cases), env=env, text=True, timeout=60
    )
    return json.loads(out)


EXCEPTION = r"""<?php
require $argv[1] . '/bootstrap/autoload.php';
use App\Services\Service4CT\Service4CTException;
$out = [];
foreach (json_decode(stream_get_contents(STDIN), true) as [$status, $headers, $body]) {
    $response = new Illuminate\Http\Client\Response(new GuzzleHttp\Psr7\Response($status, $headers, $body));
    $e = Service4CTException::fromResponse($response);
    $out[] = [$e->errorCode, $e->status, $e->requestId, $e->retryAfter, $e->retryable()];
}
echo json_encode($out);
"""


@needs_laravel
def test_error_answers_become_service4ct_exceptions(tmp_path: Path) -> None:
    """Stable code, request id (body, else header), Retry-After (seconds or HTTP date), retryable()."""

    def body(code: str) -> str:
        return json.dumps({"error": code, "detail": "d", "request_id": f"req-{code}"})

    cases = [
        (401, {}, body("unauthorized")),
        (409, {}, body("idempotency_conflict")),
        (409, {}, body("idempotency_in_progress")),
        (422, {}, body("zip_invalid")),
        (429, {"Retry-After": "7"}, body("rate_limited")),
        (503, {"Retry-After": formatdate(time.time() + 60, usegmt=True)}, body("server_busy")),
        (502, {"X-Request-ID": "gw-1"}, "<html>Bad Gateway</html>"),
    ]
    got = run_php(EXCEPTION, cases, tmp_path)
    assert got[0] == ["unauthorized", 401, "req-unauthorized", None, False]
    assert got[1][4] is False and got[2][4] is True  # a conflict is final, "in progress" is not
    assert got[3] == ["zip_invalid", 422, "req-zip_invalid", None, False]
    assert got[4] == ["rate_limited", 429, "req-rate_limited", 7, True]
    assert got[5][0] == "server_busy" and 55 <= got[5][3] <= 60 and got[5][4] is True
    assert got[6] == ["http_502", 502, "gw-1", None, True]


WEBHOOK = r"""<?php
// POST each delivery of stdin to the app's webhook route, in one process (array cache, sync queue)
require $argv[1] . '/bootstrap/autoload.php';
$app = require $argv[1] . '/bootstrap/app.php';
$kernel = $app->make(Illuminate\Contracts\Http\Kernel::class);
$out = [];
foreach (json_decode(stream_get_contents(STDIN), true) as [$headers, $body]) {
    $server = ['CONTENT_TYPE' => 'application/json', 'REMOTE_ADDR' => '127.0.0.1'];
    foreach ($headers as $name => $value) {
        $server['HTTP_' . strtoupper(str_replace('-', '_', $name))] = $value;
    }
    $request = Illuminate\Http\Request::create('/api/service4ct/webhook', 'POST', [], [], [], $server, $body);
    $response = $kernel->handle($request);
    $out[] = [$response->getStatusCode(), json_decode((string) $response->getContent(), true)];
    $kernel->terminate($request, $response);
}
echo json_encode($out);
"""


@needs_laravel
def test_webhook_cancelled_raises_the_event_once_and_unknown_events_are_ignored(tmp_path: Path) -> None:
    """job.cancelled → Service4CTJobFinished (state cancelled) once; a new event type → 200 ignored."""
    secret = "whsec-test"
    app = LaravelApp(
        tmp_path,
        {
            "SERVICE4CT_API_KEY": "unused",
            "SERVICE4CT_WEBHOOK_SECRET": secret,
            "CACHE_DRIVER": "array",
            "QUEUE_CONNECTION": "sync",  # the queued listener runs in the request
        },
    )
    job_id = "6f1c2b9e-0d4a-4e8b-9a53-2c7e1f0b8d14"

    def delivery(delivery_id: str, event: str, payload: dict[str, object]) -> list[object]:
        body = json.dumps(payload)
        headers = {
            "X-Service4CT-Delivery": delivery_id,
            "X-Service4CT-Event": event,
            "X-Service4CT-Signature": sign(secret, body.encode(), delivery=delivery_id, event=event),
        }
        return [headers, body]

    cancelled = {
        "event": "job.cancelled",
        "job_id": job_id,
        "kind": "predict",
        "state": "cancelled",
        "error": None,
        "client_ref": "row-4711",
        "metadata": {"row": 4711},
    }
    started = {"event": "job.started", "job_id": job_id, "state": "running"}
    deleted = {"event": "study.deleted", "study_id": "0b9d"}  # no job at all
    forged = delivery("41", "study.deleted", deleted)
    forged[0]["X-Service4CT-Event"] = "job.cancelled"  # type: ignore[index]
    deliveries = [
        delivery("40", "job.cancelled", cancelled),
        delivery("40", "job.cancelled", cancelled),  # redelivered
        delivery("41", "job.started", started),
        delivery("42", "study.deleted", deleted),
        forged,  # the event header is signed: not swappable
    ]
    got = run_php(WEBHOOK, deliveries, tmp_path, app.env)
    assert got == [
        [200, {"status": "accepted"}],
        [200, {"status": "duplicate"}],
        [200, {"status": "ignored"}],
        [200, {"status": "ignored"}],
        [401, {"error": "invalid_signature"}],
    ], got
    (finished,) = app.records("service4ct job finished")
    assert finished["context"] == {
        "job_id": job_id,
        "state": "cancelled",
        "error": None,
        "client_ref": "row-4711",
    }
    assert [r["context"]["event"] for r in app.records("service4ct webhook ignored")] == [
        "job.started",
        "study.deleted",
    ]
    assert not app.crashes()
