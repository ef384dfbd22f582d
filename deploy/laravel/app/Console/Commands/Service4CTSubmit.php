<?php

declare(strict_types=1);

namespace App\Console\Commands;

use App\Jobs\SubmitStudyToService4CT;
use Illuminate\Console\Command;

/**
 * php artisan service4ct:submit STUDY.zip [--ref=] [--explain=gradcam] [--callback=URL]
 *     [--priority=routine|urgent] [--metadata=JSON]
 *
 * Queues SubmitStudyToService4CT (run `php artisan queue:work redis` or Horizon to process it).
 */
final class Service4CTSubmit extends Command
{
    /** @var string */
    protected $signature = 'service4ct:submit
        {zip : path of the study ZIP}
        {--ref= : your own reference of the study, sent as client_ref (default: the file name)}
        {--explain=gradcam : none, gradcam, integrated_gradients, saliency or occlusion}
        {--callback= : webhook URL (default: SERVICE4CT_CALLBACK_URL; none: the job polls)}
        {--priority=routine : routine or urgent (taken before every routine job)}
        {--metadata= : a JSON object (at most 4 KiB) stored and echoed with the study and the job}';

    /** @var string */
    protected $description = 'Queue a study ZIP for Service4CT';

    public function handle(): int
    {
        $zip = (string) $this->argument('zip');
        if (! is_file($zip)) {
            $this->error("no such file: {$zip}");

            return 1;
        }
        $ref = (string) ($this->option('ref') ?: basename($zip, '.zip'));
        $priority = (string) $this->option('priority');
        if (! in_array($priority, ['routine', 'urgent'], true)) {
            $this->error("--priority must be routine or urgent, not {$priority}");

            return 1;
        }
        $metadata = json_decode((string) ($this->option('metadata') ?: '{}'), true);
        if (! is_array($metadata) || ($metadata !== [] && array_is_list($metadata))) {
            $this->error('--metadata must be a JSON object');

            return 1;
        }
        $callback = $this->option('callback') ?: config('service4ct.callback_url');
        SubmitStudyToService4CT::dispatch(
            $ref,
            (string) realpath($zip),
            (string) $this->option('explain'),
            $callback !== null && $callback !== '' ? (string) $callback : null,
            $priority,
            $metadata,
        );
        $this->info("queued {$ref} ({$priority})" . ($callback ? " (webhook to {$callback})" : ' (the job polls)'));

        return 0;
    }
}
