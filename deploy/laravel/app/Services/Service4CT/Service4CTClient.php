<?php

declare(strict_types=1);

namespace App\Services\Service4CT;

use GuzzleHttp\Psr7\Utils;
use Illuminate\Http\Client\PendingRequest;
use Illuminate\Http\Client\Response;
use Illuminate\Support\Facades\Http;
use RuntimeException;

/**
 * The Service4CT API from Laravel: upload a DICOM study (ZIP, streamed from disk), start a
 * prediction, poll its status, read the result and the explanation.
 *
 * Every POST carries an Idempotency-Key: sending the same request again with the same key
 * replays the first answer (no second study, no second job), so callers may retry freely.
 * Use a key that is stable across retries of one logical request (see SubmitStudyToService4CT).
 */
final class Service4CTClient
{
    public function __construct(
        private readonly string $baseUrl,
        private readonly string $apiKey,
        private readonly int $timeoutSeconds = 30,
        private readonly int $uploadTimeoutSeconds = 900,
    ) {
    }

    public static function fromConfig(): self
    {
        return new self(
            (string) config('service4ct.url'),
            (string) config('service4ct.api_key'),
            (int) config('service4ct.timeout', 30),
            (int) config('service4ct.upload_timeout', 900),
        );
    }

    /**
     * POST /v1/studies with the ZIP as the raw body, streamed (the file is never read into memory).
     *
     * @return array{study_id: string, sha256: string, size: int, existing?: bool}
     */
    public function uploadStudy(string $zipPath, string $idempotencyKey): array
    {
        $handle = fopen($zipPath, 'rb');
        if ($handle === false) {
            throw new RuntimeException("cannot open {$zipPath}");
        }
        try {
            // Guzzle's `body` option takes the stream as it is (Laravel 8's withBody() wants a string)
            $response = $this->http($this->uploadTimeoutSeconds)
                ->withHeaders(['Idempotency-Key' => $idempotencyKey])
                ->contentType('application/zip')
                ->withOptions(['body' => Utils::streamFor($handle)])
                ->send('POST', '/v1/studies');
        } finally {
            if (is_resource($handle)) {
                fclose($handle);
            }
        }

        return $this->json($response);
    }

    /**
     * POST /v1/jobs: queue a prediction (202). $explain: none, gradcam, integrated_gradients,
     * saliency or occlusion. $callbackUrl receives a signed webhook when the job finishes.
     *
     * @return array{job_id: string, state: string, status_url: string, links: array<string, string>}
     */
    public function createJob(
        string $studyId,
        string $idempotencyKey,
        string $explain = 'gradcam',
        ?string $callbackUrl = null,
        ?string $model = null,
    ): array {
        $payload = array_filter(
            ['study_id' => $studyId, 'explain' => $explain, 'callback_url' => $callbackUrl, 'model' => $model],
            static fn ($v) => $v !== null,
        );
        $response = $this->http()
            ->withHeaders(['Idempotency-Key' => $idempotencyKey])
            ->post('/v1/jobs', $payload);

        return $this->json($response);
    }

    /**
     * GET /v1/jobs/{id}: state (queued, running, succeeded, failed), stage, progress, queue
     * position, eta_s, error {code, detail}.
     *
     * @return array<string, mixed>
     */
    public function job(string $jobId): array
    {
        return $this->json($this->http()->get('/v1/jobs/' . rawurlencode($jobId)));
    }

    /**
     * Poll until the job is finished (or $timeoutSeconds pass); returns the last status.
     * Prefer the webhook in web requests; polling suits a queue job or a CLI command.
     *
     * @return array<string, mixed>
     */
    public function waitForJob(string $jobId, int $timeoutSeconds = 900, float $maxPollSeconds = 10.0): array
    {
        $deadline = microtime(true) + $timeoutSeconds;
        while (true) {
            $status = $this->job($jobId);
            if (in_array($status['state'], ['succeeded', 'failed'], true)) {
                return $status;
            }
            $remaining = $deadline - microtime(true);
            if ($remaining <= 0) {
                return $status;
            }
            // the API's ETA paces the polling: close to it, ask more often
            $eta = isset($status['eta_s']) ? (float) $status['eta_s'] : $maxPollSeconds;
            $pause = max(1.0, min($maxPollSeconds, $eta / 2, $remaining));
            usleep((int) ($pause * 1_000_000));
        }
    }

    /**
     * GET /v1/jobs/{id}/result: probability of pathology, label, operating points with
     * decisions, model, selected series, QC warnings. 409 job_not_finished while it runs.
     *
     * @return array<string, mixed>
     */
    public function result(string $jobId): array
    {
        return $this->json($this->http()->get('/v1/jobs/' . rawurlencode($jobId) . '/result'));
    }

    /**
     * GET /v1/jobs/{id}/explanation: method, stats, viewer geometry and presigned URLs (NIfTI,
     * PNG sprite, stats JSON) valid for at most 15 minutes: fetch them when you need them.
     *
     * @return array<string, mixed>
     */
    public function explanation(string $jobId, ?string $method = null): array
    {
        $query = $method !== null ? ['method' => $method] : [];

        return $this->json($this->http()->get('/v1/jobs/' . rawurlencode($jobId) . '/explanation', $query));
    }

    /**
     * POST /v1/jobs/{id}/viewer-token: a read-only token of this job (its status, result and
     * explanation only) that lives at most 15 minutes, for the browser viewer. Hand it to the page
     * in memory (postMessage); never put it, or the API key, in a URL.
     *
     * @return array<string, mixed> {token, token_type, job_id, expires_at}
     */
    public function viewerToken(string $jobId): array
    {
        return $this->json($this->http()->post('/v1/jobs/' . rawurlencode($jobId) . '/viewer-token'));
    }

    /**
     * POST /v1/studies/import: predict a study that the service's worker fetches by WADO-RS from
     * a PACS configured for this client (`service4ct dicomweb add CLIENT URL --role source`).
     * 202 with the job; 422 dicomweb_endpoint_not_configured for any other URL.
     *
     * @return array{job_id: string, state: string, status_url: string, links: array<string, string>}
     */
    public function importStudy(
        string $dicomwebUrl,
        string $studyInstanceUid,
        string $idempotencyKey,
        ?string $seriesInstanceUid = null,
        string $explain = 'gradcam',
        ?string $callbackUrl = null,
    ): array {
        $payload = array_filter(
            [
                'dicomweb_url' => $dicomwebUrl,
                'study_instance_uid' => $studyInstanceUid,
                'series_instance_uid' => $seriesInstanceUid,
                'explain' => $explain,
                'callback_url' => $callbackUrl,
            ],
            static fn ($v) => $v !== null,
        );
        $response = $this->http()
            ->withHeaders(['Idempotency-Key' => $idempotencyKey])
            ->post('/v1/studies/import', $payload);

        return $this->json($response);
    }

    /**
     * GET /v1/jobs/{id}/dicom: the job's DICOM SR and Secondary Capture (kind, UIDs, presigned url,
     * download path) and their pushes to the client's PACS. 422 dicom_source_uids_invalid when
     * the source study's UIDs cannot be referenced (the result itself stands).
     *
     * @return array<string, mixed>
     */
    public function dicomResults(string $jobId): array
    {
        return $this->json($this->http()->get('/v1/jobs/' . rawurlencode($jobId) . '/dicom'));
    }

    /**
     * One DICOM result (application/dicom), written to $path: e.g. to forward it to a PACS.
     */
    public function downloadDicom(string $jobId, string $sopInstanceUid, string $path): void
    {
        $response = $this->http()
            ->accept('application/dicom')
            ->sink($path)
            ->get('/v1/jobs/' . rawurlencode($jobId) . '/dicom/' . rawurlencode($sopInstanceUid));
        if ($response->failed()) {
            throw Service4CTException::fromResponse($response);
        }
    }

    /**
     * GET /v1/jobs/{id}/fhir: the result as a FHIR R4 DiagnosticReport (application/fhir+json),
     * for the hospital's FHIR server or interface engine.
     *
     * @return array<string, mixed>
     */
    public function fhirReport(string $jobId): array
    {
        return $this->json(
            $this->http()->accept('application/fhir+json')->get('/v1/jobs/' . rawurlencode($jobId) . '/fhir')
        );
    }

    private function http(?int $timeoutSeconds = null): PendingRequest
    {
        return Http::baseUrl(rtrim($this->baseUrl, '/'))
            ->withToken($this->apiKey)
            ->acceptJson()
            ->withOptions(['connect_timeout' => 10])
            ->timeout($timeoutSeconds ?? $this->timeoutSeconds);
    }

    /**
     * @return array<string, mixed>
     */
    private function json(Response $response): array
    {
        if ($response->failed()) {
            throw Service4CTException::fromResponse($response);
        }
        $body = $response->json();

        return is_array($body) ? $body : [];
    }
}
