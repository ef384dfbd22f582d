<?php

declare(strict_types=1);

namespace App\Jobs;

use App\Events\Service4CTJobFinished;
use App\Services\Service4CT\Service4CTClient;
use App\Services\Service4CT\Service4CTException;
use Illuminate\Bus\Queueable;
use Illuminate\Contracts\Queue\ShouldQueue;
use Illuminate\Foundation\Bus\Dispatchable;
use Illuminate\Http\Client\ConnectionException;
use Illuminate\Queue\InteractsWithQueue;
use Illuminate\Queue\SerializesModels;
use Illuminate\Support\Facades\Log;

/**
 * A Horizon (Redis queue) job: upload a study ZIP to Service4CT and queue its prediction.
 *
 * Safe retries: each request carries an Idempotency-Key derived from this queued job's UUID
 * (the same on every attempt of this job) and the step, so an attempt that died after the
 * upload or after creating the job replays the first answer on retry instead of uploading
 * twice or queueing a second prediction. Transient errors (5xx, timeouts, connection errors)
 * are retried with backoff; a refused study (zip_invalid, too_few_slices, ...) fails at once.
 *
 *     SubmitStudyToService4CT::dispatch($study->id, $study->zip_path, 'gradcam', route('service4ct.webhook'));
 */
final class SubmitStudyToService4CT implements ShouldQueue
{
    use Dispatchable;
    use InteractsWithQueue;
    use Queueable;
    use SerializesModels;

    public int $tries = 6;

    public int $timeout = 1200;

    public bool $failOnTimeout = true;

    public function __construct(
        public readonly string $studyRef,
        public readonly string $zipPath,
        public readonly string $explain = 'gradcam',
        public readonly ?string $callbackUrl = null,
    ) {
    }

    /**
     * Seconds to wait before retry 1, 2, ... (Horizon honours this).
     *
     * @return list<int>
     */
    public function backoff(): array
    {
        return [10, 30, 60, 180, 600];
    }

    public function handle(): void
    {
        $client = Service4CTClient::fromConfig();
        try {
            $study = $client->uploadStudy($this->zipPath, $this->idempotencyKey('upload'));
            $job = $client->createJob(
                $study['study_id'],
                $this->idempotencyKey('predict'),
                $this->explain,
                $this->callbackUrl,
            );
            Log::info('service4ct job queued', ['study_ref' => $this->studyRef, 'job_id' => $job['job_id']]);

            if ($this->callbackUrl === null) {
                // no webhook: poll (bounded by this job's timeout), then announce the outcome
                $status = $client->waitForJob($job['job_id'], $this->timeout - 120);
                if (! in_array($status['state'], ['succeeded', 'failed'], true)) {
                    $this->release(60); // still running: look again later (same keys, no new job)

                    return;
                }
                $payload = ['job_id' => $job['job_id'], 'state' => $status['state'], 'error' => $status['error']];
                if ($status['state'] === 'succeeded') {
                    $payload += $client->result($job['job_id']);
                }
                Service4CTJobFinished::dispatch($payload);
            }
        } catch (Service4CTException $e) {
            if ($e->retryable()) {
                throw $e; // Horizon retries after backoff(), with the same Idempotency-Keys
            }
            Log::warning('service4ct refused the study', ['study_ref' => $this->studyRef, 'error' => $e->errorCode]);
            $this->fail($e); // permanent: a retry would get the same answer
        } catch (ConnectionException $e) {
            throw $e; // network trouble: retry
        }
    }

    /**
     * Stable across the attempts of this queued job, different for another dispatch.
     */
    private function idempotencyKey(string $step): string
    {
        $jobUuid = $this->job?->uuid() ?? $this->studyRef;

        return 'laravel:' . hash('sha256', $jobUuid . '|' . $this->studyRef . '|' . $step);
    }
}
