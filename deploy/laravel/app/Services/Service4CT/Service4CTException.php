<?php

declare(strict_types=1);

namespace App\Services\Service4CT;

use Illuminate\Http\Client\Response;
use RuntimeException;

/**
 * An error answer of the Service4CT API: {"error": "<stable code>", "detail": "...", "request_id": "..."}.
 *
 * retryable() tells a queue job whether trying again can help (5xx, 429, a request with the same
 * Idempotency-Key still in progress) or not (a refused study: zip_invalid, too_few_slices, ...).
 */
final class Service4CTException extends RuntimeException
{
    public function __construct(
        public readonly string $errorCode,
        public readonly int $status,
        string $detail = '',
        public readonly ?string $requestId = null,
    ) {
        parent::__construct(trim("{$errorCode}: {$detail}"), $status);
    }

    public static function fromResponse(Response $response): self
    {
        $body = $response->json();
        $body = is_array($body) ? $body : [];

        return new self(
            (string) ($body['error'] ?? 'http_' . $response->status()),
            $response->status(),
            (string) ($body['detail'] ?? ''),
            isset($body['request_id']) ? (string) $body['request_id'] : null,
        );
    }

    public function retryable(): bool
    {
        return $this->status >= 500
            || $this->status === 429
            || $this->status === 408
            || $this->errorCode === 'idempotency_in_progress';
    }
}
