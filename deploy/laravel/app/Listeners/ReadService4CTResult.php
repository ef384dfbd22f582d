<?php

declare(strict_types=1);

namespace App\Listeners;

use App\Events\Service4CTJobFinished;
use App\Services\Service4CT\Service4CTClient;
use Illuminate\Contracts\Queue\ShouldQueue;
use Illuminate\Support\Facades\Log;

/**
 * Reacts to a finished Service4CT job, in the queue (the webhook request is answered at once):
 * reads the result and the explanation's links of a succeeded prediction.
 *
 * Replace the log lines with what the product does: store probability, label and decisions on
 * its study (found by the payload's client_ref), route an `indeterminate` label to a reader,
 * notify; a `cancelled` state closes the worklist row without a result. Explanation URLs expire
 * (15 minutes): store the job id, ask for the explanation again when a viewer opens.
 */
final class ReadService4CTResult implements ShouldQueue
{
    public int $tries = 5;

    /**
     * @return list<int>
     */
    public function backoff(): array
    {
        return [10, 30, 60, 180];
    }

    public function handle(Service4CTJobFinished $event): void
    {
        $p = $event->payload;
        Log::info('service4ct job finished', [
            'job_id' => $p['job_id'],
            'state' => $p['state'],
            'error' => $p['error']['code'] ?? null,
            'client_ref' => $p['client_ref'] ?? null,
        ]);
        if ($p['state'] !== 'succeeded' || ($p['kind'] ?? 'predict') !== 'predict') {
            return;
        }
        $client = Service4CTClient::fromConfig();
        $result = $client->result($p['job_id']);
        $explanation = $client->explanation($p['job_id']);
        Log::info('service4ct result read', [
            'job_id' => $p['job_id'],
            'probability' => $result['probability'],
            'label' => $result['label'],
            'decision' => $result['decision'] ?? null,
            'model' => $result['model']['name'] ?? null,
            'explanation_method' => $explanation['method'] ?? null,
            'explanation_links' => array_keys($explanation['files'] ?? []),
        ]);
    }
}
