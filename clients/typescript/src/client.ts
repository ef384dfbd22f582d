/**
 * A small typed fetch client of the Service4CT API (no runtime dependencies).
 *
 * - Auth: `apiKey` (sent as `Authorization: Bearer …`, never in a URL), or a `fetcher` that adds
 *   the auth itself (a browser app's backend proxy, a viewer token in memory).
 * - Every POST carries an `Idempotency-Key` (the caller's, or a fresh `crypto.randomUUID()`), so
 *   a retried request creates nothing twice.
 * - An error answer becomes a {@link Service4CTError} with the stable `error` code, the HTTP
 *   status, the request id and, for 429/503, `retryAfter` (seconds).
 * - {@link Service4CTClient.jobs} / {@link Service4CTClient.studies} walk the keyset pages;
 *   {@link Service4CTClient.waitForJob} polls with back-off until the job is final.
 */
import type {
  ErrorBody,
  ExplainRequest,
  Explanation,
  FeedbackCreate,
  FeedbackHistory,
  JobAccepted,
  JobCreate,
  JobFeedback,
  JobFilters,
  JobPage,
  JobResult,
  JobState,
  JobStatus,
  ModelsOut,
  Performance,
  PerformanceQuery,
  PredictRequest,
  StudyFilters,
  StudyOut,
  StudyPage,
  StudySeries,
  ViewerToken,
} from "./types.js";

/** `fetch`'s signature: the global one, or one of the host app's. */
export type Fetcher = (input: string, init?: RequestInit) => Promise<Response>;

export interface ClientOptions {
  /** The API's base URL, e.g. `https://s4ct.example` (no trailing `/v1`). */
  apiBase: string;
  /** An API key, sent as `Authorization: Bearer <key>`. */
  apiKey?: string;
  /** Sends the requests instead of the global `fetch` (and adds the auth itself when there is no `apiKey`). */
  fetcher?: Fetcher;
  /** Makes the Idempotency-Key of a POST that names none (default: `crypto.randomUUID()`). */
  idempotencyKey?: () => string;
}

/** Options of one POST. */
export interface PostOptions {
  /** The request's Idempotency-Key (default: a fresh UUID): send the same key to retry safely. */
  idempotencyKey?: string;
  signal?: AbortSignal;
}

export interface UploadOptions extends PostOptions {
  /** Your own reference of the study (X-Client-Ref). */
  clientRef?: string;
  /** Your own JSON object (X-Client-Metadata, ≤ 4 KiB). */
  metadata?: Record<string, unknown>;
  /** Send the ZIP as a `multipart/form-data` file part instead of a raw `application/zip` body. */
  multipart?: boolean;
}

export interface WaitOptions {
  /** First pause between polls, ms (default 500). */
  initialDelayMs?: number;
  /** Longest pause, ms (default 5000). */
  maxDelayMs?: number;
  /** Growth of the pause per poll (default 1.5). */
  factor?: number;
  /** Give up after this many ms (default 600000): a {@link Service4CTError} with code `timeout`. */
  timeoutMs?: number;
  /** Called with every status read. */
  onStatus?: (status: JobStatus) => void;
  signal?: AbortSignal;
}

/** The final states of a job. */
export const FINAL_STATES: readonly JobState[] = ["succeeded", "failed", "cancelled"];

/** An error answer of the service (or a client-side failure with code `network_error` / `timeout`). */
export class Service4CTError extends Error {
  /** The stable snake_case code (see the error table of the API description). */
  readonly code: string;
  /** The HTTP status (0 when no answer came). */
  readonly status: number;
  /** The request id of the answer (body or `X-Request-ID` header). */
  readonly requestId: string | null;
  /** Seconds to wait before retrying (the `Retry-After` header of 429 and 503 answers). */
  readonly retryAfter: number | null;
  readonly detail: string;

  constructor(code: string, status: number, detail: string, requestId: string | null, retryAfter: number | null) {
    super(`${code} (HTTP ${status}): ${detail}`);
    this.name = "Service4CTError";
    this.code = code;
    this.status = status;
    this.detail = detail;
    this.requestId = requestId;
    this.retryAfter = retryAfter;
  }
}

function retryAfterSeconds(value: string | null): number | null {
  if (value === null || value.trim() === "") return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return seconds;
  const at = Date.parse(value); // an HTTP date
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

async function errorOf(response: Response): Promise<Service4CTError> {
  let body: Partial<ErrorBody> = {};
  try {
    body = (await response.json()) as Partial<ErrorBody>;
  } catch {
    // not JSON (a proxy's page): the status speaks
  }
  return new Service4CTError(
    typeof body.error === "string" ? body.error : `http_${response.status}`,
    response.status,
    typeof body.detail === "string" ? body.detail : response.statusText,
    body.request_id ?? response.headers.get("X-Request-ID"),
    retryAfterSeconds(response.headers.get("Retry-After")),
  );
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        reject(signal.reason);
      },
      { once: true },
    );
  });
}

type Query = Record<string, string | number | boolean | null | undefined>;

/** The typed client. All paths are relative to `apiBase`. */
export class Service4CTClient {
  readonly apiBase: string;
  private readonly apiKey: string | undefined;
  private readonly fetcher: Fetcher;
  private readonly newKey: () => string;

  constructor(options: ClientOptions) {
    if (!options.apiKey && !options.fetcher) {
      throw new TypeError("Service4CTClient needs an apiKey or a fetcher that adds the auth");
    }
    this.apiBase = options.apiBase.replace(/\/+$/, "");
    this.apiKey = options.apiKey;
    this.fetcher = options.fetcher ?? ((input, init) => fetch(input, init));
    this.newKey = options.idempotencyKey ?? (() => crypto.randomUUID());
  }

  /** Sends one request; the parsed JSON body of a 2xx answer (undefined for 204), else throws. */
  async request<T>(
    method: string,
    path: string,
    init: { query?: Query; json?: unknown; body?: BodyInit; headers?: Record<string, string> } & PostOptions = {},
  ): Promise<T> {
    const url = new URL(this.apiBase + path);
    for (const [name, value] of Object.entries(init.query ?? {})) {
      if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
    }
    const headers: Record<string, string> = { Accept: "application/json", ...init.headers };
    if (this.apiKey) headers["Authorization"] = `Bearer ${this.apiKey}`;
    if (method === "POST") headers["Idempotency-Key"] = init.idempotencyKey ?? this.newKey();
    let body = init.body;
    if (init.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(init.json);
    }
    let response: Response;
    try {
      response = await this.fetcher(url.toString(), { method, headers, body, signal: init.signal });
    } catch (e) {
      if (init.signal?.aborted) throw e;
      throw new Service4CTError("network_error", 0, String(e), null, null);
    }
    if (!response.ok) throw await errorOf(response);
    if (response.status === 204) return undefined as T;
    return (await response.json()) as T;
  }

  // --- studies

  /** Uploads a DICOM study ZIP (POST /v1/studies); the same bytes again answer the stored study. */
  uploadStudy(zip: Blob | ArrayBuffer | Uint8Array<ArrayBuffer>, options: UploadOptions = {}): Promise<StudyOut> {
    const headers: Record<string, string> = {};
    if (options.clientRef !== undefined) headers["X-Client-Ref"] = options.clientRef;
    if (options.metadata !== undefined) headers["X-Client-Metadata"] = JSON.stringify(options.metadata);
    const blob = zip instanceof Blob ? zip : new Blob([zip], { type: "application/zip" });
    let body: BodyInit = blob;
    if (options.multipart) {
      const form = new FormData();
      form.append("file", blob, "study.zip");
      body = form; // fetch writes the multipart Content-Type with its boundary
    } else {
      headers["Content-Type"] = "application/zip";
    }
    return this.request<StudyOut>("POST", "/v1/studies", { ...options, body, headers });
  }

  getStudy(studyId: string): Promise<StudyOut> {
    return this.request("GET", `/v1/studies/${encodeURIComponent(studyId)}`);
  }

  /** Every series of a study with its ranking and usability (the series picker). */
  studySeries(studyId: string): Promise<StudySeries> {
    return this.request("GET", `/v1/studies/${encodeURIComponent(studyId)}/series`);
  }

  deleteStudy(studyId: string): Promise<void> {
    return this.request("DELETE", `/v1/studies/${encodeURIComponent(studyId)}`);
  }

  /** One page of GET /v1/studies. */
  listStudies(filters: StudyFilters = {}, cursor?: string | null): Promise<StudyPage> {
    return this.request("GET", "/v1/studies", { query: { ...filters, cursor } as Query });
  }

  /** Every study matching `filters`, page after page (keyset pagination; `limit` is the page size). */
  async *studies(filters: StudyFilters = {}): AsyncGenerator<StudyPage["items"][number]> {
    for await (const page of this.pages((cursor) => this.listStudies(filters, cursor))) yield* page.items;
  }

  // --- jobs

  /** Predicts a study (POST /v1/jobs): the job, queued. */
  predict(request: JobCreate, options: PostOptions = {}): Promise<JobAccepted> {
    return this.request("POST", "/v1/jobs", { ...options, json: request });
  }

  /** Predicts a study by its path (POST /v1/studies/{id}/predict). */
  predictStudy(studyId: string, request: PredictRequest = {}, options: PostOptions = {}): Promise<JobAccepted> {
    return this.request("POST", `/v1/studies/${encodeURIComponent(studyId)}/predict`, { ...options, json: request });
  }

  getJob(jobId: string): Promise<JobStatus> {
    return this.request("GET", `/v1/jobs/${encodeURIComponent(jobId)}`);
  }

  /** One page of GET /v1/jobs. */
  listJobs(filters: JobFilters = {}, cursor?: string | null): Promise<JobPage> {
    return this.request("GET", "/v1/jobs", { query: { ...filters, cursor } as Query });
  }

  /** Every job matching `filters`, page after page (keyset pagination; `limit` is the page size). */
  async *jobs(filters: JobFilters = {}): AsyncGenerator<JobStatus> {
    for await (const page of this.pages((cursor) => this.listJobs(filters, cursor))) yield* page.items;
  }

  /** Cancels a job (idempotent); a finished job answers 409 `job_finished`. */
  cancelJob(jobId: string, options: PostOptions = {}): Promise<JobStatus> {
    return this.request("POST", `/v1/jobs/${encodeURIComponent(jobId)}/cancel`, options);
  }

  deleteJob(jobId: string): Promise<void> {
    return this.request("DELETE", `/v1/jobs/${encodeURIComponent(jobId)}`);
  }

  result(jobId: string): Promise<JobResult> {
    return this.request("GET", `/v1/jobs/${encodeURIComponent(jobId)}/result`);
  }

  /** The job's explanation (the most recent one, or the one of `method`) with presigned file URLs. */
  explanation(jobId: string, method?: string): Promise<Explanation> {
    return this.request("GET", `/v1/jobs/${encodeURIComponent(jobId)}/explanation`, { query: { method } });
  }

  /** Explains a succeeded job with another method (POST /v1/jobs/{id}/explain): an explain job. */
  explain(jobId: string, request: ExplainRequest, options: PostOptions = {}): Promise<JobAccepted> {
    return this.request("POST", `/v1/jobs/${encodeURIComponent(jobId)}/explain`, { ...options, json: request });
  }

  /** A short-lived read-only token for one job's viewer (hand it over in memory, never in a URL). */
  viewerToken(jobId: string, options: PostOptions = {}): Promise<ViewerToken> {
    return this.request("POST", `/v1/jobs/${encodeURIComponent(jobId)}/viewer-token`, options);
  }

  /** A reader's answer about a succeeded prediction; it replaces that reader's current answer. */
  giveFeedback(jobId: string, feedback: FeedbackCreate, options: PostOptions = {}): Promise<JobFeedback> {
    return this.request("POST", `/v1/jobs/${encodeURIComponent(jobId)}/feedback`, { ...options, json: feedback });
  }

  /** The job's current feedback and every answer ever given. */
  feedback(jobId: string): Promise<FeedbackHistory> {
    return this.request("GET", `/v1/jobs/${encodeURIComponent(jobId)}/feedback`);
  }

  /** A model's live figures against the readers' feedback, next to its model card's test figures. */
  performance(model: string, query: PerformanceQuery = {}): Promise<Performance> {
    return this.request("GET", `/v1/models/${encodeURIComponent(model)}/performance`, { query: query as Query });
  }

  models(): Promise<ModelsOut> {
    return this.request("GET", "/v1/models");
  }

  /**
   * Polls GET /v1/jobs/{id} until the job is final (succeeded, failed or cancelled), waiting
   * `initialDelayMs`, then `factor` times longer each time up to `maxDelayMs`; a 429 or 503
   * waits its `Retry-After`. Returns the final status (check its `state`).
   */
  async waitForJob(jobId: string, options: WaitOptions = {}): Promise<JobStatus> {
    const { initialDelayMs = 500, maxDelayMs = 5000, factor = 1.5, timeoutMs = 600_000 } = options;
    const deadline = Date.now() + timeoutMs;
    let delay = initialDelayMs;
    for (;;) {
      let wait = delay;
      try {
        const status = await this.getJob(jobId);
        options.onStatus?.(status);
        if (FINAL_STATES.includes(status.state)) return status;
      } catch (e) {
        if (!(e instanceof Service4CTError) || ![429, 503].includes(e.status)) throw e;
        wait = Math.max(delay, (e.retryAfter ?? 0) * 1000);
      }
      if (Date.now() + wait > deadline) {
        throw new Service4CTError("timeout", 0, `job ${jobId} not final after ${timeoutMs} ms`, null, null);
      }
      await sleep(wait, options.signal);
      delay = Math.min(maxDelayMs, delay * factor);
    }
  }

  private async *pages<P extends { next_cursor: string | null }>(
    fetchPage: (cursor: string | null) => Promise<P>,
  ): AsyncGenerator<P> {
    let cursor: string | null = null;
    do {
      const page: P = await fetchPage(cursor);
      yield page;
      cursor = page.next_cursor;
    } while (cursor !== null);
  }
}
