<?php

declare(strict_types=1);

namespace App\Events;

use Illuminate\Foundation\Events\Dispatchable;

/**
 * A Service4CT job finished (from a verified webhook, or from polling).
 *
 * $payload: event (job.succeeded | job.failed), job_id, kind, study_id, state, attempt,
 * error {code, detail} | null, probability and label (succeeded predictions), status_url,
 * result_url, explanation_url, finished_at. Never patient identifiers.
 */
final class Service4CTJobFinished
{
    use Dispatchable;

    /**
     * @param array<string, mixed> $payload
     */
    public function __construct(public readonly array $payload)
    {
    }
}
