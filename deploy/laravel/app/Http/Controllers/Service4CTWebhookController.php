<?php

declare(strict_types=1);

namespace App\Http\Controllers;

use App\Events\Service4CTJobFinished;
use Illuminate\Http\JsonResponse;
use Illuminate\Http\Request;
use Illuminate\Support\Facades\Cache;
use Illuminate\Support\Facades\Log;
use Throwable;

/**
 * Receives Service4CT webhooks:
 *
 *     X-Service4CT-Signature: t=<unix seconds>,v1=<…>,
 *                             v2=<hex hmac_sha256(secret, t + "." + delivery + "." + event + "." + raw body)>
 *     X-Service4CT-Delivery:  <delivery id, the same on every redelivery>
 *     X-Service4CT-Event:     job.succeeded | job.failed | job.cancelled | (other types)
 *
 * While Service4CT rotates the webhook secret the header carries one v1 and one v2 per valid
 * secret (t=…,v1=…,v2=…,v1=…,v2=…): the delivery is accepted if any v2 matches this app's secret,
 * so SERVICE4CT_WEBHOOK_SECRET can be switched at any time during the overlap.
 *
 * The v2 signature is required: it covers the raw body (never re-encoded JSON), the delivery id
 * this controller deduplicates on and the event, so none of them can be swapped or forged. It is
 * checked in constant time, and the timestamp must lie within the tolerance (replays of old
 * deliveries are refused). v1 (body only) is sent for older receivers and not accepted here.
 * Deliveries are at-least-once and retried with backoff until a 2xx: a delivery id seen before
 * is acknowledged and ignored, and the work is left to queued listeners (answer fast).
 *
 * Events: a job reaching a terminal state (job.succeeded, job.failed, job.cancelled) raises
 * Service4CTJobFinished once, with `state` succeeded, failed or cancelled: a cancelled job is
 * finished too (it never runs again and has no result), so one event and one listener see every
 * outcome. Any other event type (the service adds new ones over time, e.g. job.started,
 * explanation.succeeded, study.deleted) is verified, logged and answered 200 `ignored` without
 * raising an event: subscribe to it here when the product needs it. Answering 200 (not 4xx)
 * keeps the service from redelivering an event this app does not handle.
 */
final class Service4CTWebhookController extends Controller
{
    /** the events that raise Service4CTJobFinished */
    public const FINISHED_EVENTS = ['job.succeeded', 'job.failed', 'job.cancelled'];

    public function __invoke(Request $request): JsonResponse
    {
        $secret = (string) config('service4ct.webhook_secret');
        $body = $request->getContent();
        $header = (string) $request->header('X-Service4CT-Signature', '');
        $delivery = (string) $request->header('X-Service4CT-Delivery', '');
        $event = (string) $request->header('X-Service4CT-Event', '');
        $tolerance = (int) config('service4ct.webhook_tolerance', 300);

        if ($secret === '' || ! self::verify($secret, $body, $header, $delivery, $event, time(), $tolerance)) {
            Log::warning('service4ct webhook refused: bad signature');

            return new JsonResponse(['error' => 'invalid_signature'], 401);
        }

        if (! in_array($event, self::FINISHED_EVENTS, true)) {
            Log::info('service4ct webhook ignored', ['delivery' => $delivery, 'event' => $event]);

            return new JsonResponse(['status' => 'ignored']);
        }
        $payload = json_decode($body, true);
        if (! is_array($payload) || ! isset($payload['job_id'], $payload['state'])) {
            return new JsonResponse(['error' => 'invalid_payload'], 422);
        }

        // at-least-once delivery: the same (signed) delivery id may arrive again (Cache::add is atomic)
        $seenKey = 'service4ct:webhook:' . $delivery;
        if (! Cache::add($seenKey, true, now()->addDays(2))) {
            Log::info('service4ct webhook duplicate ignored', [
                'delivery' => $delivery,
                'event' => $event,
                'job_id' => $payload['job_id'],
            ]);

            return new JsonResponse(['status' => 'duplicate']);
        }
        try {
            Service4CTJobFinished::dispatch($payload);
            Log::info('service4ct webhook accepted', [
                'delivery' => $delivery,
                'event' => $event,
                'job_id' => $payload['job_id'],
                'client_ref' => $payload['client_ref'] ?? null,
            ]);

            return new JsonResponse(['status' => 'accepted']);
        } catch (Throwable $e) {
            Cache::forget($seenKey); // not handled: let the redelivery in
            throw $e;
        }
    }

    /**
     * The receiver side of the signature (same as app.webhooks.verify in Python): every check of
     * the signature header lives here, so that a new scheme is one more branch of this function.
     */
    public static function verify(
        string $secret,
        string $body,
        string $header,
        string $delivery,
        string $event,
        int $now,
        int $toleranceSeconds = 300
    ): bool {
        $parts = [];
        foreach (explode(',', $header) as $item) {
            $pair = explode('=', trim($item), 2);
            if (count($pair) === 2) {
                $parts[$pair[0]][] = $pair[1];  // v1 and v2 repeat during a secret rotation
            }
        }
        if ($delivery === '' || $event === '' || ! isset($parts['t'], $parts['v2'])
            || count($parts['t']) !== 1 || preg_match('/^\d{1,12}$/', $parts['t'][0]) !== 1) {
            return false;
        }
        $timestamp = (int) $parts['t'][0];
        if (abs($now - $timestamp) > $toleranceSeconds) {
            return false;
        }
        $expected = hash_hmac('sha256', $timestamp . '.' . $delivery . '.' . $event . '.' . $body, $secret);
        $valid = false;
        foreach ($parts['v2'] as $signature) {
            $valid = hash_equals($expected, $signature) || $valid;  // no early exit: constant time
        }

        return $valid;
    }
}
