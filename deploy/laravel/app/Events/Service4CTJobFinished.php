<?php

declare(strict_types=1);

namespace App\Events;

use Illuminate\Foundation\Events\Dispatchable;

/**
 * A Service4CT job reached a terminal state (from a verified webhook, or from polling): it
 * succeeded, failed, or was cancelled (a cancelled job has no result; its result and explanation
 * answer 409 job_cancelled).
 *
 * $payload: event (job.succeeded | job.failed | job.cancelled), job_id, kind, study_id, state
 * (succeeded | failed | cancelled), attempt, error {code, detail} | null, probability and label
 * (succeeded predictions), status_url, result_url, explanation_url, finished_at, client_ref and
 * metadata (what the product sent with the job). Never patient identifiers.
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
