<?php

declare(strict_types=1);

namespace App\Console\Commands;

use App\Jobs\SubmitStudyToService4CT;
use Illuminate\Console\Command;

/**
 * php artisan service4ct:submit STUDY.zip [--ref=] [--explain=gradcam] [--callback=URL]
 *
 * Queues SubmitStudyToService4CT (run `php artisan queue:work redis` or Horizon to process it).
 */
final class Service4CTSubmit extends Command
{
    /** @var string */
    protected $signature = 'service4ct:submit
        {zip : path of the study ZIP}
        {--ref= : your own reference of the study (default: the file name)}
        {--explain=gradcam : none, gradcam, integrated_gradients, saliency or occlusion}
        {--callback= : webhook URL (default: SERVICE4CT_CALLBACK_URL; none: the job polls)}';

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
        $callback = $this->option('callback') ?: config('service4ct.callback_url');
        SubmitStudyToService4CT::dispatch(
            $ref,
            (string) realpath($zip),
            (string) $this->option('explain'),
            $callback !== null && $callback !== '' ? (string) $callback : null,
        );
        $this->info("queued {$ref}" . ($callback ? " (webhook to {$callback})" : ' (the job polls)'));

        return 0;
    }
}
