import { useCallback, useEffect, useMemo, useState } from "react";
import { ApiError, type Explanation, type Fetcher, type JobResult, type JobStatus, makeGetJson, sleep } from "./api";
import { type CanvasReady, CanvasView } from "./CanvasView";
import { type NiivueReady, NiivueView } from "./NiivueView";
import { ResultPanel } from "./ResultPanel";

export type ViewerPhase = "loading" | "waiting" | "ready" | "error";

export interface ViewerState {
  phase: ViewerPhase;
  text?: string;
  error?: { code: string; detail: string };
  job?: JobStatus;
  result?: JobResult;
  explanation?: Explanation;
  slice?: number;
  /** canvas mode: the canvas and the layers' grid; NiiVue mode: the Niivue instance */
  canvas?: CanvasReady;
  niivue?: NiivueReady;
}

export interface SaliencyViewerProps {
  jobId: string;
  /** the API's base URL, e.g. https://triage.example.org (no trailing /v1) */
  apiBase: string;
  /** an API key or a viewer token: sent as `Authorization: Bearer …`, never in a URL */
  apiKey?: string;
  /** the host's fetch that adds its own auth (a proxy session, a refreshed token); wins over apiKey */
  fetcher?: Fetcher;
  /** "canvas" (default): the service's PNG layers; "niivue": ctNiftiUrl with the saliency NIfTI over it */
  mode?: "canvas" | "niivue";
  /** NiiVue mode: the CT volume as NIfTI (RAS header from the same DICOM series), fetched without API auth */
  ctNiftiUrl?: string;
  /** NiiVue mode: the CT file's name when the URL does not end in .nii/.nii.gz (e.g. a presigned URL) */
  ctNiftiName?: string;
  /** explanation method (default: the job's latest) */
  method?: string;
  /** initial heat opacity, 0–100 (default 60) */
  opacity?: number;
  /** every state change: for hosts and tests */
  onState?: (s: ViewerState) => void;
  className?: string;
}

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

/**
 * The saliency of a job over its CT, with the result: polls GET /v1/jobs/{id} until the job ends,
 * reads GET /v1/jobs/{id}/result (an explain job: its parent's) and GET /v1/jobs/{id}/explanation.
 */
export function SaliencyViewer(props: SaliencyViewerProps) {
  const { jobId, apiBase, apiKey, fetcher, mode = "canvas", method } = props;
  const getJson = useMemo(() => makeGetJson({ apiBase, apiKey, fetcher }), [apiBase, apiKey, fetcher]);
  const [state, setState] = useState<ViewerState>({ phase: "loading", text: "Loading…" });
  const [noSaliency, setNoSaliency] = useState<string | null>(null);
  const update = useCallback((patch: Partial<ViewerState>) => setState((s) => ({ ...s, ...patch })), []);
  const fail = useCallback(
    (e: unknown) => {
      const error =
        e instanceof ApiError ? { code: e.code, detail: e.detail } : { code: "viewer_error", detail: String((e as Error)?.message ?? e) };
      update({ phase: "error", error });
    },
    [update]
  );
  const explPath = `jobs/${encodeURIComponent(jobId)}/explanation${method ? `?method=${encodeURIComponent(method)}` : ""}`;
  const refresh = useCallback(() => getJson<Explanation>(explPath), [getJson, explPath]);

  useEffect(() => {
    const ac = new AbortController();
    setState({ phase: "loading", text: "Loading…" });
    setNoSaliency(null);
    (async () => {
      const id = encodeURIComponent(jobId);
      let job: JobStatus;
      for (let delay = 500; ; delay = Math.min(delay * 1.5, 5000)) {
        job = await getJson<JobStatus>(`jobs/${id}`, ac.signal);
        if (TERMINAL.has(job.state)) break;
        let text = `Job ${job.state}`;
        if (job.state === "queued" && job.queue_position != null) text += ` (${job.queue_position} ahead)`;
        if (job.state === "running") text += `: ${job.stage ?? "starting"} ${Math.round(100 * (job.progress ?? 0))} %`;
        update({ phase: "waiting", text: `${text}…`, job });
        await sleep(delay, ac.signal);
      }
      if (job.state !== "succeeded") {
        const err = job.error ?? { code: job.state === "cancelled" ? "job_cancelled" : "failed", detail: "" };
        update({ phase: "error", job, error: { code: err.code, detail: err.detail ?? "" } });
        return;
      }
      const resultJob = job.kind === "explain" && job.parent_job_id ? job.parent_job_id : jobId;
      const result = await getJson<JobResult>(`jobs/${encodeURIComponent(resultJob)}/result`, ac.signal);
      if (job.explain === "none" && job.kind !== "explain") {
        setNoSaliency("No saliency was requested for this job (explain: none).");
        update({ phase: "ready", job, result, text: "" });
        return;
      }
      try {
        const explanation = await getJson<Explanation>(explPath, ac.signal);
        update({ phase: "loading", text: "Loading saliency…", job, result, explanation });
      } catch (e) {
        if (!(e instanceof ApiError && e.code === "explanation_not_found")) throw e;
        setNoSaliency("This job has no saliency map.");
        update({ phase: "ready", job, result, text: "" });
      }
    })().catch((e) => {
      if (!ac.signal.aborted) fail(e);
    });
    return () => ac.abort();
  }, [jobId, getJson, explPath, update, fail]);

  useEffect(() => {
    props.onState?.(state);
  }, [state]); // eslint-disable-line react-hooks/exhaustive-deps

  const onSlice = useCallback((slice: number) => update({ slice }), [update]);
  const opacity = props.opacity ?? 60;
  const { phase, result, explanation, error } = state;
  let view = null;
  if (explanation && !noSaliency && phase !== "error") {
    view =
      mode === "niivue" ? (
        props.ctNiftiUrl ? (
          <NiivueView
            expl={explanation}
            ctNiftiUrl={props.ctNiftiUrl}
            ctNiftiName={props.ctNiftiName}
            initialOpacity={opacity}
            onReady={(niivue) => update({ phase: "ready", text: "", niivue })}
            onError={fail}
            onSlice={onSlice}
          />
        ) : (
          <p className="s4ct-note">NiiVue mode needs the CT volume: pass ctNiftiUrl.</p>
        )
      ) : (
        <CanvasView
          expl={explanation}
          refresh={refresh}
          initialOpacity={opacity}
          onReady={(canvas) => update({ phase: "ready", text: "", canvas })}
          onError={fail}
          onSlice={onSlice}
        />
      );
  }
  return (
    <div className={`s4ct-viewer ${props.className ?? ""}`} data-state={phase} data-mode={mode} aria-busy={phase === "loading" || phase === "waiting"}>
      {phase === "error" && error ? (
        <p className="s4ct-error" role="alert" style={{ color: "#b00020" }}>
          {error.code === "unauthorized" ? "Not authorised" : "Error"}: <code>{error.code}</code>
          {error.detail ? ` — ${error.detail}` : ""}
        </p>
      ) : (
        state.text && (
          <p className="s4ct-status" role="status">
            {state.text}
          </p>
        )
      )}
      {noSaliency && <p className="s4ct-note">{noSaliency}</p>}
      <div style={{ display: "flex", flexWrap: "wrap", gap: 16, alignItems: "flex-start" }}>
        {view}
        {result && <ResultPanel result={result} />}
      </div>
    </div>
  );
}
