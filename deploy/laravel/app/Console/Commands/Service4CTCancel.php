<?php

declare(strict_types=1);

namespace App\Console\Commands;

use App\Services\Service4CT\Service4CTClient;
use App\Services\Service4CT\Service4CTException;
use Illuminate\Console\Command;

/**
 * php artisan service4ct:cancel JOB_ID
 *
 * Cancels a queued or running job (a queued one never runs, a running one stops at its next
 * stage boundary and stores nothing more) and prints its status as JSON. Cancelling again is
 * harmless; a job that already succeeded or failed: error job_finished (HTTP 409), exit 1.
 * With a callback URL, the job.cancelled webhook follows (Service4CTJobFinished, state cancelled).
 */
final class Service4CTCancel extends Command
{
    use ReportsService4CTErrors;

    /** @var string */
    protected $signature = 'service4ct:cancel {job : the Service4CT job id}';

    /** @var string */
    protected $description = 'Cancel a queued or running Service4CT job';

    public function handle(): int
    {
        try {
            $status = Service4CTClient::fromConfig()->cancel((string) $this->argument('job'));
        } catch (Service4CTException $e) {
            return $this->reportServiceError($e);
        }
        $this->line((string) json_encode($status, JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES));

        return 0;
    }
}
