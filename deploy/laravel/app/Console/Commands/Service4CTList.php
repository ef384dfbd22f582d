<?php

declare(strict_types=1);

namespace App\Console\Commands;

use App\Services\Service4CT\Service4CTClient;
use App\Services\Service4CT\Service4CTException;
use Illuminate\Console\Command;

/**
 * php artisan service4ct:list [--state=queued --state=running] [--client-ref=REF] [--priority=]
 *     [--limit=50] [--max=] [--json]
 *
 * This client's jobs, newest first, page after page (it follows next_cursor until the last page,
 * or until --max jobs were printed): a table, or with --json one job status per line. The last
 * line says how many jobs and pages were read.
 */
final class Service4CTList extends Command
{
    use ReportsService4CTErrors;

    /** @var string */
    protected $signature = 'service4ct:list
        {--state=* : queued, running, succeeded, failed or cancelled (repeat for several)}
        {--client-ref= : only the jobs with this client_ref (your own reference)}
        {--priority= : urgent or routine}
        {--limit=50 : jobs per page (1 to 200)}
        {--max=0 : stop after this many jobs (0: all)}
        {--json : one JSON object per job instead of a table}';

    /** @var string */
    protected $description = "List this client's Service4CT jobs (follows the pagination cursors)";

    public function handle(): int
    {
        $filters = array_filter([
            'state' => array_values((array) $this->option('state')),
            'client_ref' => (string) $this->option('client-ref'),
            'priority' => (string) $this->option('priority'),
        ], static fn ($v) => $v !== '' && $v !== []);
        $max = max(0, (int) $this->option('max'));
        $rows = [];
        $pages = 0;
        try {
            foreach (Service4CTClient::fromConfig()->pages('jobs', $filters, (int) $this->option('limit')) as $page) {
                ++$pages;
                foreach ($page['items'] as $job) {
                    $rows[] = $job;
                    if ($this->option('json')) {
                        $this->line((string) json_encode($job, JSON_UNESCAPED_SLASHES));
                    }
                    if ($max > 0 && count($rows) >= $max) {
                        break 2;
                    }
                }
            }
        } catch (Service4CTException $e) {
            return $this->reportServiceError($e);
        }
        if (! $this->option('json')) {
            $this->table(
                ['job', 'state', 'priority', 'client_ref', 'label', 'created'],
                array_map(static fn (array $j) => [
                    $j['job_id'] ?? '',
                    $j['state'] ?? '',
                    $j['priority'] ?? '',
                    $j['client_ref'] ?? '',
                    $j['label'] ?? '',
                    $j['created_at'] ?? '',
                ], $rows),
            );
        }
        $this->info(sprintf('%d jobs, %d pages', count($rows), $pages));

        return 0;
    }
}
