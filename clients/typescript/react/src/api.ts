/**
 * The few API calls the viewer makes, and their types.
 *
 * Auth goes in headers only: `apiKey` becomes `Authorization: Bearer <key>` (an API key or a
 * viewer token, POST /v1/jobs/{id}/viewer-token), or the host passes a `fetcher` that adds its
 * own (a proxy session, a token it refreshes). Presigned S3 URLs are fetched with the plain
 * `fetch`, without credentials: the signature in the URL is their authorisation.
 */
import type { components } from "../../src/schema";

export type JobStatus = components["schemas"]["JobStatus"];
export type JobResult = components["schemas"]["JobResult"];
export type Explanation = components["schemas"]["Explanation"];

/** `fetch`'s shape: the host's fetcher gets the full URL and must add the auth header itself. */
export type Fetcher = (input: string, init?: RequestInit) => Promise<Response>;

/** An error answer of the API: `code` is its stable `error` field (docs/api.md), or `network_error`. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly detail: string;
  constructor(status: number, code: string, detail?: string) {
    super(`${code}${detail ? `: ${detail}` : ""}`);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.detail = detail ?? "";
  }
}

export interface ApiOptions {
  apiBase: string;
  apiKey?: string;
  fetcher?: Fetcher;
}

/** GET `path` (under `{apiBase}/v1/`) as JSON; an error answer throws {@link ApiError}. */
export function makeGetJson(opts: ApiOptions): <T>(path: string, signal?: AbortSignal) => Promise<T> {
  const base = opts.apiBase.replace(/\/+$/, "");
  const doFetch: Fetcher = opts.fetcher ?? ((input, init) => fetch(input, init));
  return async function getJson<T>(path: string, signal?: AbortSignal): Promise<T> {
    const headers: Record<string, string> = { Accept: "application/json" };
    if (opts.apiKey) headers.Authorization = `Bearer ${opts.apiKey}`;
    let r: Response;
    try {
      r = await doFetch(`${base}/v1/${path}`, { headers, cache: "no-store", signal });
    } catch (e) {
      if (signal?.aborted) throw e;
      throw new ApiError(0, "network_error", "the API could not be reached (network or CORS)");
    }
    let body: unknown = null;
    try {
      body = await r.json();
    } catch {
      /* not JSON */
    }
    if (!r.ok) {
      const b = (body ?? {}) as { error?: string; detail?: string };
      throw new ApiError(r.status, b.error ?? `http_${r.status}`, typeof b.detail === "string" ? b.detail : "");
    }
    return body as T;
  };
}

/** Bytes of a presigned or host URL, fetched without the API's auth (`credentials: "omit"` for S3). */
export async function fetchBytes(url: string, credentials: RequestCredentials, signal?: AbortSignal): Promise<ArrayBuffer> {
  const r = await fetch(url, { credentials, signal });
  if (!r.ok) throw new ApiError(r.status, "file_unavailable", `${r.status} for a volume file`);
  return r.arrayBuffer();
}

export const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      reject(signal.reason);
    });
  });
