<?php

declare(strict_types=1);

namespace App\Services\Service4CT;

use Generator;
use GuzzleHttp\Psr7\Utils;
use Illuminate\Http\Client\PendingRequest;
use Illuminate\Http\Client\Response;
use Illuminate\Support\Facades\Http;
use InvalidArgumentException;
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
    /** the terminal states of a job */
    public const FINISHED = ['succeeded', 'failed', 'cancelled'];

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
     * $clientRef (your record's id, at most 128 characters) and $metadata (a JSON object of at most
     * 4 KiB) travel as the X-Client-Ref and X-Client-Metadata headers (the body is the ZIP alone);
     * the service stores and echoes them. Never put patient identifiers in them.
     *
     * @param array<string, mixed> $metadata
     *
     * @return array{study_id: string, sha256: string, size: int, existing?: bool}
     */
    public function uploadStudy(
        string $zipPath,
        string $idempotencyKey,
        ?string $clientRef = null,
        array $metadata = [],
    ): array {
        $handle = fopen($zipPath, 'rb');
        if ($handle === false) {
            throw new RuntimeException("cannot open {$zipPath}");
        }
        try {
            // Guzzle's `body` option takes the stream as it is (Laravel 8's withBody() wants a string)
            $response = $this->http($this->uploadTimeoutSeconds)
                ->withHeaders(['Idempotency-Key' => $idempotencyKey] + self::clientHeaders($clientRef, $metadata))
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
     * saliency or occlusion. $callbackUrl receives a signed webhook when the job finishes (or is
     * cancelled). $priority: urgent (taken before every routine job) or routine. $clientRef and
     * $metadata: your record's id and a small JSON object, echoed in the status, the list items,
     * the result and the webhook payload. $seriesUid: a usable series of series() instead of the
     * best-ranked one.
     *
     * @param array<string, mixed> $metadata
     *
     * @return array{job_id: string, state: string, status_url: string, links: array<string, string>}
     */
    public function createJob(
        string $studyId,
        string $idempotencyKey,
        string $explain = 'gradcam',
        ?string $callbackUrl = null,
        ?string $model = null,
        string $priority = 'routine',
        ?string $clientRef = null,
        array $metadata = [],
        ?string $seriesUid = null,
    ): array {
        $payload = array_filter(
            [
                'study_id' => $studyId,
                'explain' => $explain,
                'callback_url' => $callbackUrl,
                'model' => $model,
                'priority' => $priority,
                'client_ref' => $clientRef,
                'series_uid' => $seriesUid,
                // an empty PHP array would encode as [] (a list), not {}
                'metadata' => $metadata === [] ? null : $metadata,
            ],
            static fn ($v) => $v !== null,
        );
        $response = $this->http()
            ->withHeaders(['Idempotency-Key' => $idempotencyKey])
            ->post('/v1/jobs', $payload);

        return $this->json($response);
    }

    /**
     * GET /v1/jobs/{id}: state (queued, running, succeeded, failed, cancelled), priority, stage, progress, queue
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
            if (in_array($status['state'], self::FINISHED, true)) {
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
     * POST /v1/jobs/{id}/cancel: a queued job never runs, a running one stops at its next stage
     * boundary and stores nothing more; returns its status (state cancelled). Idempotent; a job
     * that already succeeded or failed: Service4CTException job_finished (409).
     *
     * @return array<string, mixed>
     */
    public function cancel(string $jobId): array
    {
        return $this->json($this->http()->post('/v1/jobs/' . rawurlencode($jobId) . '/cancel'));
    }

    /**
     * GET /v1/jobs: one page of this client's jobs, newest first, {items, next_cursor}. $filters:
     * state (a string or a list of states), study_id, client_ref, label, priority, created_after,
     * created_before (ISO 8601). Pass next_cursor back as $cursor for the next page (null on
     * the last); $limit 1 to 200.
     *
     * @param array<string, string|list<string>> $filters
     *
     * @return array{items: list<array<string, mixed>>, next_cursor: ?string}
     */
    public function jobs(array $filters = [], ?string $cursor = null, int $limit = 50): array
    {
        return $this->page('/v1/jobs', $filters, $cursor, $limit);
    }

    /**
     * GET /v1/studies: one page of this client's studies (filters: client_ref, created_after,
     * created_before), as jobs().
     *
     * @param array<string, string|list<string>> $filters
     *
     * @return array{items: list<array<string, mixed>>, next_cursor: ?string}
     */
    public function studies(array $filters = [], ?string $cursor = null, int $limit = 50): array
    {
        return $this->page('/v1/studies', $filters, $cursor, $limit);
    }

    /**
     * Every page of GET /v1/jobs or /v1/studies ($list: 'jobs' or 'studies'), following next_cursor.
     * Keyset pagination: rows created meanwhile never shift, repeat or skip items of later pages.
     *
     * @param array<string, string|list<string>> $filters
     *
     * @return Generator<int, array{items: list<array<string, mixed>>, next_cursor: ?string}>
     */
    public function pages(string $list, array $filters = [], int $limit = 50): Generator
    {
        if (! in_array($list, ['jobs', 'studies'], true)) {
            throw new InvalidArgumentException("no such list: {$list} (jobs or studies)");
        }
        $cursor = null;
        do {
            $page = $list === 'studies'
                ? $this->studies($filters, $cursor, $limit)
                : $this->jobs($filters, $cursor, $limit);
            yield $page;
            $cursor = $page['next_cursor'] ?? null;
        } while ($cursor !== null);
    }

    /**
     * Every job matching $filters, page after page: `foreach ($client->allJobs(['state' => 'queued']) as $job)`.
     *
     * @param array<string, string|list<string>> $filters
     *
     * @return Generator<int, array<string, mixed>>
     */
    public function allJobs(array $filters = [], int $pageSize = 50): Generator
    {
        foreach ($this->pages('jobs', $filters, $pageSize) as $page) {
            yield from $page['items'];
        }
    }

    /**
     * Every study matching $filters, page after page (as allJobs()).
     *
     * @param array<string, string|list<string>> $filters
     *
     * @return Generator<int, array<string, mixed>>
     */
    public function allStudies(array $filters = [], int $pageSize = 50): Generator
    {
        foreach ($this->pages('studies', $filters, $pageSize) as $page) {
            yield from $page['items'];
        }
    }

    /**
     * GET /v1/studies/{id}/series: every series with rank, usability and reason codes, before any
     * prediction; pass a usable series_uid to createJob() to override the ranking.
     *
     * @return array<string, mixed> {study_id, selected_uid, error, series: [...]}
     */
    public function series(string $studyId): array
    {
        return $this->json($this->http()->get('/v1/studies/' . rawurlencode($studyId) . '/series'));
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

    /**
     * @param array<string, string|list<string>> $filters
     *
     * @return array{items: list<array<string, mixed>>, next_cursor: ?string}
     */
    private function page(string $path, array $filters, ?string $cursor, int $limit): array
    {
        $query = $filters + ['limit' => (string) $limit] + ($cursor !== null ? ['cursor' => $cursor] : []);
        // a repeated filter (state=queued&state=running), not PHP's state[0]=...
        $pairs = [];
        foreach ($query as $name => $values) {
            foreach ((array) $values as $value) {
                $pairs[] = rawurlencode((string) $name) . '=' . rawurlencode((string) $value);
            }
        }
        $body = $this->json($this->http()->get($path . '?' . implode('&', $pairs)));

        return ['items' => $body['items'] ?? [], 'next_cursor' => $body['next_cursor'] ?? null];
    }

    /**
     * X-Client-Ref and X-Client-Metadata of an upload (JSON with non-ASCII escaped as \uXXXX,
     * json_encode's default, as header values must be ASCII).
     *
     * @param array<string, mixed> $metadata
     *
     * @return array<string, string>
     */
    private static function clientHeaders(?string $clientRef, array $metadata): array
    {
        $headers = [];
        if ($clientRef !== null) {
            $headers['X-Client-Ref'] = $clientRef;
        }
        if ($metadata !== []) {
            $headers['X-Client-Metadata'] = json_encode($metadata, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES);
        }

        return $headers;
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
