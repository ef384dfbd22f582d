<?php

declare(strict_types=1);

namespace App\Console\Commands;

use App\Services\Service4CT\Service4CTClient;
use App\Services\Service4CT\Service4CTException;
use Illuminate\Console\Command;

/**
 * php artisan service4ct:show JOB_ID [--result] [--explanation] [--viewer-token] [--series]
 *
 * Prints a job's status (and its result and explanation links) as JSON; an error answer of the
 * service is printed with its stable code and request id, and the command exits 1.
 */
final class Service4CTShow extends Command
{
    use ReportsService4CTErrors;

    /** @var string */
    protected $signature = 'service4ct:show
        {job : the Service4CT job id}
        {--result : also read the result}
        {--explanation : also read the explanation (presigned links, valid 15 minutes)}
        {--viewer-token : also issue a read-only viewer token of the job (at most 15 minutes)}
        {--series : also list the series of the study of the job (rank, usability, reason codes)}';

    /** @var string */
    protected $description = 'Show a Service4CT job, its result and its explanation links';

    public function handle(): int
    {
        $client = Service4CTClient::fromConfig();
        $job = (string) $this->argument('job');
        try {
            $out = ['job' => $client->job($job)];
            if ($this->option('result')) {
                $out['result'] = $client->result($job);
            }
            if ($this->option('explanation')) {
                $out['explanation'] = $client->explanation($job);
            }
            if ($this->option('series') && isset($out['job']['study_id'])) {
                $out['series'] = $client->series((string) $out['job']['study_id']);
            }
            if ($this->option('viewer-token')) {
                $out['viewer_token'] = $client->viewerToken($job);
            }
        } catch (Service4CTException $e) {
            return $this->reportServiceError($e);
        }
        $this->line((string) json_encode($out, JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES));

        return 0;
    }
}
