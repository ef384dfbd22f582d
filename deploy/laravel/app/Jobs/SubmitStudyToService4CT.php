<?php

declare(strict_types=1);

namespace App\Jobs;

use App\Events\Service4CTJobFinished;
use App\Services\Service4CT\Service4CTClient;
use App\Services\Service4CT\Service4CTException;
use Illuminate\Bus\Queueable;
use Illuminate\Contracts\Queue\ShouldQueue;
use Illuminate\Foundation\Bus\Dispatchable;
use Illuminate\Queue\InteractsWithQueue;
use Illuminate\Queue\SerializesModels;
use Illuminate\Support\Facades\Log;
use Throwable;

/**
 * A queued (Redis / Horizon) job: upload a study ZIP to Service4CT and queue its prediction.
 *
 * Safe retries: each request carries an Idempotency-Key derived from this queued job's UUID
 * (the same on every attempt of this job, also after a worker was killed) and the step, so an
 * attempt that died after the upload or after creating the job replays the first answer on
 * retry instead of uploading twice or queueing a second prediction.
 *
 * Errors: a retryable answer (429, 5xx, idempotency_in_progress) releases the job back to the
 * queue after the service's Retry-After (else after backoff()); connection errors and timeouts
 * are retried after backoff(); any other answer (a refused study, a bad key, a conflict) fails
 * the job at once: a retry would get the same answer.
 *
 * The product's own reference of the study ($studyRef, e.g. its worklist row id) is sent as
 * `client_ref` on the upload and the job (with $metadata): list the service's jobs by it
 * (`Service4CTClient::jobs(['client_ref' => ...])`, `php artisan service4ct:list --client-ref=`),
 * and find it again in the status, the result and the webhook. $priority: urgent studies are
 * taken before every routine one. Never put patient identifiers in the reference or the metadata.
 *
 * With a callback URL the outcome arrives by webhook (Service4CTWebhookController); without
 * one, the job polls the service and raises Service4CTJobFinished itself.
 *
 *     SubmitStudyToService4CT::dispatch($study->id, $study->zip_path, 'gradcam', route('service4ct.webhook'), 'urgent');
 */
final class SubmitStudyToService4CT implements ShouldQueue
{
    use Dispatchable;
    use InteractsWithQueue;
    use Queueable;
    use SerializesModels;

    public int $tries = 6;

    /** seconds; keep the queue's retry_after (config/queue.php) above it */
    public int $timeout = 1200;

    public bool $failOnTimeout = true;

    public function __construct(
        public readonly string $studyRef,
        public readonly string $zipPath,
        public readonly string $explain = 'gradcam',
        public readonly ?string $callbackUrl = null,
        public readonly string $priority = 'routine',
        /** @var array<string, mixed> */
        public readonly array $metadata = [],
    ) {
    }

    /**
     * Seconds to wait before retry 1, 2, ... after an exception (Horizon honours this).
     *
     * @return list<int>
     */
    public function backoff(): array
    {
        return [10, 30, 60, 180, 600];
    }

    public function handle(): void
    {
        try {
            $this->submit(Service4CTClient::fromConfig());
        } catch (Service4CTException $e) {
            if (! $e->retryable()) {
                Log::warning('service4ct refused the request', $this->context($e));
                $this->fail($e);

                return;
            }
            $backoff = $this->backoff();
            $delay = $e->retryAfter ?? $backoff[min($this->attempts(), count($backoff)) - 1];
            Log::info('service4ct asks to retry later', $this->context($e) + ['delay_s' => $delay]);
            $this->release($delay);
        }
    }

    public function failed(Throwable $e): void
    {
        Log::error('service4ct submission failed', $e instanceof Service4CTException
            ? $this->context($e)
            : ['study_ref' => $this->studyRef, 'error' => $e::class]);
    }

    private function submit(Service4CTClient $client): void
    {
        if (function_exists('memory_reset_peak_usage')) {
            memory_reset_peak_usage(); // PHP 8.2+: the log shows what the upload itself needed
        }
        $before = memory_get_usage();
        $study = $client->uploadStudy(
            $this->zipPath,
            $this->idempotencyKey('upload'),
            $this->studyRef,
            $this->metadata,
        );
        Log::info('service4ct study uploaded', [
            'study_ref' => $this->studyRef,
            'study_id' => $study['study_id'],
            'existing' => $study['existing'] ?? false,
            'attempt' => $this->attempts(),
            'upload_memory_bytes' => memory_get_peak_usage() - $before,
        ]);
        $job = $client->createJob(
            $study['study_id'],
            $this->idempotencyKey('predict'),
            $this->explain,
            $this->callbackUrl,
            priority: $this->priority,
            clientRef: $this->studyRef,
            metadata: $this->metadata,
        );
        Log::info('service4ct job queued', [
            'study_ref' => $this->studyRef,
            'job_id' => $job['job_id'],
            'priority' => $this->priority,
            'attempt' => $this->attempts(),
        ]);
        if ($this->callbackUrl !== null) {
            return; // the webhook tells the outcome
        }

        // no webhook: poll (bounded below this job's timeout), then announce the outcome
        $limit = min((int) config('service4ct.poll_timeout', 900), $this->timeout - 120);
        $status = $client->waitForJob($job['job_id'], $limit);
        if (! in_array($status['state'], Service4CTClient::FINISHED, true)) {
            $this->release(30); // still running: look again later (same keys, no new job)

            return;
        }
        Service4CTJobFinished::dispatch([
            'event' => 'job.' . $status['state'],
            'job_id' => $job['job_id'],
            'kind' => 'predict',
            'study_id' => $study['study_id'],
            'state' => $status['state'],
            'error' => $status['error'] ?? null,
            'client_ref' => $status['client_ref'] ?? $this->studyRef,
            'metadata' => $status['metadata'] ?? null,
        ]);
    }

    /**
     * Stable across the attempts of this queued job, different for another dispatch.
     */
    private function idempotencyKey(string $step): string
    {
        $jobUuid = $this->job?->uuid() ?? $this->studyRef;

        return 'laravel:' . hash('sha256', $jobUuid . '|' . $this->studyRef . '|' . $step);
    }

    /**
     * @return array<string, mixed>
     */
    private function context(Service4CTException $e): array
    {
        return [
            'study_ref' => $this->studyRef,
            'error' => $e->errorCode,
            'status' => $e->status,
            'request_id' => $e->requestId,
            'attempt' => $this->attempts(),
        ];
    }
}
