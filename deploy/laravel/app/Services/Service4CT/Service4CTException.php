<?php

declare(strict_types=1);

namespace App\Services\Service4CT;

use Illuminate\Http\Client\Response;
use RuntimeException;

/**
 * An error answer of the Service4CT API: {"error": "<stable code>", "detail": "...", "request_id": "..."}.
 *
 * $errorCode is the stable code (unauthorized, study_not_found, idempotency_conflict,
 * payload_too_large, zip_invalid, server_busy, ...), $status the HTTP status, $detail the
 * human-readable reason, $requestId the id
 * to quote when reporting a problem (also in the service's logs), $retryAfter the seconds of the
 * answer's Retry-After header (429 and 503), if any.
 *
 * retryable() tells a queue job whether trying again can help (5xx, 408, 429, a request with the
 * same Idempotency-Key still in progress) or not (a refused study, a bad key, a conflict).
 */
final class Service4CTException extends RuntimeException
{
    public function __construct(
        public readonly string $errorCode,
        public readonly int $status,
        public readonly string $detail = '',
        public readonly ?string $requestId = null,
        public readonly ?int $retryAfter = null,
    ) {
        parent::__construct(trim("{$errorCode}: {$detail}"), $status);
    }

    public static function fromResponse(Response $response): self
    {
        $body = $response->json();
        $body = is_array($body) ? $body : [];
        $requestId = $body['request_id'] ?? $response->header('X-Request-ID');

        return new self(
            (string) ($body['error'] ?? 'http_' . $response->status()),
            $response->status(),
            (string) ($body['detail'] ?? ''),
            $requestId !== null && $requestId !== '' ? (string) $requestId : null,
            self::retryAfterSeconds($response->header('Retry-After')),
        );
    }

    public function retryable(): bool
    {
        return $this->status >= 500
            || $this->status === 429
            || $this->status === 408
            || $this->errorCode === 'idempotency_in_progress';
    }

    /**
     * Retry-After is either delay-seconds or an HTTP date (RFC 9110 §10.2.3).
     */
    private static function retryAfterSeconds(string $value): ?int
    {
        $value = trim($value);
        if ($value === '') {
            return null;
        }
        if (ctype_digit($value)) {
            return (int) $value;
        }
        $at = strtotime($value);

        return $at === false ? null : max(0, $at - time());
    }
}
