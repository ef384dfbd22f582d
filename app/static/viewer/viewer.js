/*
 * Service4CT reference viewer: the contract example for the product's viewer.
 *
 * Page: GET /viewer/{job_id}. It needs a viewer token (POST /v1/jobs/{id}/viewer-token:
 * read-only, this job only, minutes), held in memory only: never in a URL or in storage.
 * The token arrives either
 *   - by postMessage from the window that opened or embeds the page: the page posts
 *     {type: "s4ct-viewer-ready", job_id} to it, which answers
 *     {type: "s4ct-viewer-token", token} (only messages from that window are read), or
 *   - typed into the page's form (data-state "token" while it waits).
 * A "#key=..." fragment of older links is removed from the address bar and never used.
 * Calls, all with "Authorization: Bearer <token>":
 *   GET /v1/jobs/{id}              state; queued/running → poll, failed → its error code
 *   GET /v1/jobs/{id}/result       probability, label, decision per operating point, model
 *                                  (an explain job shows its parent's result)
 *   GET /v1/jobs/{id}/explanation  stats (stats.layers = the grid), presigned URLs (files.*.url)
 * Layers (PNG sprites on one grid, see ml.explain.files.write_saliency):
 *   files.ct_layer    8-bit gray CT in stats.layers.ct.window_hu
 *   files.heat_layer  RGBA colour heatmap, alpha 0 below the threshold
 *   files.saliency_layer  8-bit saliency values (not used here: reading pixels of a
 *                     cross-origin image needs CORS; a WebGL viewer can colour it itself)
 * Tile t of a layer sits at column t % columns, row floor(t / columns), tile_px [w, h]
 * pixels, and shows series slice stats.layers.slices[t]. The canvas draws the CT
 * tile, then the heat tile with globalAlpha = opacity; no pixel is read back, so a
 * canvas tainted by the other-origin S3 images is fine.
 *
 * For tests and embedding: <html data-state> is token | loading | waiting | ready | error,
 * and window.s4ctViewer holds the state (tile, slice, opacity, layout, error, renderMs).
 */
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const DISPLAY_PX = 512; // long side of the displayed slice, CSS pixels

  const viewer = { phase: "loading", jobId: null, error: null, renderMs: null, tile: null, slice: null };
  window.s4ctViewer = viewer;

  class ApiError extends Error {
    constructor(status, code, detail) {
      super(`${code}: ${detail || ""}`);
      this.status = status;
      this.code = code;
      this.detail = detail || "";
    }
  }

  function setPhase(phase, text) {
    viewer.phase = phase;
    document.documentElement.dataset.state = phase;
    const box = $("status");
    box.className = "status" + (phase === "error" ? " error" : "");
    if (text !== undefined) box.textContent = text;
  }

  function fail(code, detail, what) {
    viewer.error = { code, detail };
    setPhase("error", "");
    const box = $("status");
    box.append(`${what || "Error"}: `);
    const c = document.createElement("code");
    c.textContent = code;
    box.append(c);
    if (detail) box.append(` — ${detail}`);
  }

  function dropKeyFromUrl() {
    // an old /viewer/{id}#key=... link: the fragment leaves the address bar, its key is not used
    if (!location.hash) return false;
    history.replaceState(null, "", location.pathname + location.search);
    return true;
  }

  function hostWindow() {
    if (window.opener && window.opener !== window) return window.opener;
    return window.parent !== window ? window.parent : null;
  }

  function waitForToken(keyWasInUrl) {
    // resolves with the token: posted by the opening/embedding window, or typed into the form
    return new Promise((resolve) => {
      const form = $("token-form");
      const host = hostWindow();
      let done = false;
      const accept = (token) => {
        if (done || typeof token !== "string" || !token.trim()) return;
        done = true;
        window.removeEventListener("message", onMessage);
        form.hidden = true;
        resolve(token.trim());
      };
      function onMessage(e) {
        if (host === null || e.source !== host) return; // only the window that opened or embeds us
        if (e.data && e.data.type === "s4ct-viewer-token") accept(e.data.token);
      }
      window.addEventListener("message", onMessage);
      form.addEventListener("submit", (ev) => {
        ev.preventDefault();
        const input = $("token");
        const token = input.value;
        input.value = "";
        accept(token);
      });
      if (keyWasInUrl) {
        $("token-note").textContent =
          "Keys in the address are not accepted (they stay in the browser history): use a viewer token.";
      }
      form.hidden = false;
      setPhase("token", "");
      if (host !== null) host.postMessage({ type: "s4ct-viewer-ready", job_id: viewer.jobId }, "*");
    });
  }

  function jobIdFromPath() {
    const parts = location.pathname.split("/").filter(Boolean);
    return decodeURIComponent(parts[parts.length - 1] || "");
  }

  function makeApi(token) {
    // relative to /viewer/{id}: works behind a path prefix too
    return async function api(path) {
      let r;
      try {
        r = await fetch(`../v1/${path}`, { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
      } catch (e) {
        throw new ApiError(0, "network_error", "the API could not be reached");
      }
      let body = null;
      try {
        body = await r.json();
      } catch (e) {
        /* not JSON */
      }
      if (!r.ok) {
        throw new ApiError(r.status, (body && body.error) || `http_${r.status}`, body && body.detail);
      }
      return body;
    };
  }

  const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

  function loadImage(url) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.decoding = "async";
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("image failed to load"));
      img.src = url; // no crossOrigin: drawn only, never read back
    });
  }

  async function waitForJob(api, jobId) {
    let delay = 500;
    for (;;) {
      const job = await api(`jobs/${encodeURIComponent(jobId)}`);
      if (job.state === "succeeded" || job.state === "failed" || job.state === "cancelled") return job;
      let text = `Job ${job.state}`;
      if (job.state === "queued" && job.queue_position != null) text += ` (${job.queue_position} ahead)`;
      if (job.state === "running") text += `: ${job.stage || "starting"} ${Math.round(100 * (job.progress || 0))} %`;
      if (job.eta_s != null) text += `, about ${Math.ceil(job.eta_s)} s left`;
      setPhase("waiting", `${text}…`);
      await sleep(delay);
      delay = Math.min(delay * 1.5, 5000);
    }
  }

  function fmt(v, digits) {
    return v == null ? "–" : Number(v).toFixed(digits);
  }

  function showResult(result) {
    if (result.not_for_clinical_use) {
      const b = $("banner");
      b.textContent = "NOT FOR CLINICAL USE — research/demo model, not validated for diagnosis or triage";
      b.hidden = false;
    }
    const indeterminate = result.label === "indeterminate";
    const prob = $("probability");
    // an indeterminate study's probability is not a decision: shown muted, never as a red percentage
    prob.textContent = `${(100 * result.probability).toFixed(1)} %${indeterminate ? " (not a decision)" : ""}`;
    prob.className = indeterminate ? "muted" : "";
    const label = $("label");
    label.textContent = indeterminate ? "indeterminate: the model cannot judge this study" : result.label;
    label.className = result.label;
    const reasons = result.indeterminate_reasons || [];
    const why = $("reasons");
    why.textContent = reasons.length ? `Reasons: ${reasons.join(", ")}` : "";
    why.hidden = !reasons.length;
    $("op-name").textContent = `(${result.operating_point})`;
    const m = result.model || {};
    $("model").textContent = `${m.name} ${m.version}${m.sha256 ? ` (sha256 ${m.sha256.slice(0, 12)}…)` : ""}`;
    const tbody = $("decisions").tBodies[0];
    tbody.replaceChildren();
    for (const [name, op] of Object.entries(result.operating_points || {})) {
      const tr = tbody.insertRow();
      tr.dataset.op = name;
      const decision = (result.decision || {})[name] || "–";
      const cells = [
        name + (name === result.operating_point ? " *" : ""),
        fmt(op.threshold, 3),
        decision,
        fmt(op.sensitivity, 2),
        fmt(op.specificity, 2),
      ];
      cells.forEach((text, i) => {
        const td = tr.insertCell();
        td.textContent = text;
        if (i === 2) td.className = decision;
      });
    }
    const warnings = (result.qc && result.qc.warnings) || [];
    $("qc").textContent = warnings.length ? `QC warnings: ${warnings.map((w) => w.code || w).join(", ")}` : "";
    $("info").hidden = false;
  }

  function setupCanvas(layout) {
    const [tw, th] = layout.tile_px;
    const [px, py] = layout.pixel_mm || [1, 1];
    const wmm = tw * px;
    const hmm = th * py;
    const k = DISPLAY_PX / Math.max(wmm, hmm);
    const w = Math.round(wmm * k);
    const h = Math.round(hmm * k);
    const dpr = window.devicePixelRatio || 1;
    const canvas = $("slice");
    canvas.style.width = `${w}px`;
    canvas.style.height = `${h}px`;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    canvas.hidden = false;
    return { canvas, w, h, dpr };
  }

  function startViewer(expl, images) {
    const L = expl.stats.layers;
    const peak = expl.stats.peak || null;
    const [tw, th] = L.tile_px;
    const [nz, ny, nx] = L.source_shape_zyx;
    const { canvas, w, h, dpr } = setupCanvas(L);
    const ctx = canvas.getContext("2d");
    const slider = $("slider");
    const opacity = $("opacity");
    slider.max = String(L.slices.length - 1);
    slider.value = String(L.peak_tile != null ? L.peak_tile : 0);
    $("legend").hidden = expl.stats.overlay && expl.stats.overlay.colormap !== "jet";
    if (peak) {
      const mm = peak.lps_mm.map((v) => v.toFixed(1)).join(", ");
      $("peak").textContent = `Peak: slice ${peak.index_zyx[0] + 1}, LPS (${mm}) mm — the slider starts there`;
    }
    viewer.layout = L;

    function draw() {
      const t = Number(slider.value);
      const a = Number(opacity.value) / 100;
      const sx = (t % L.columns) * tw;
      const sy = Math.floor(t / L.columns) * th;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.globalAlpha = 1;
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, w, h);
      ctx.imageSmoothingEnabled = true;
      ctx.imageSmoothingQuality = "high";
      if (images.ct) ctx.drawImage(images.ct, sx, sy, tw, th, 0, 0, w, h);
      if (a > 0) {
        ctx.globalAlpha = a;
        ctx.drawImage(images.heat, sx, sy, tw, th, 0, 0, w, h);
        ctx.globalAlpha = 1;
      }
      const z = L.slices[t];
      if (peak && z === peak.index_zyx[0]) {
        // a white ring beside the peak (white: it never reads as heatmap colour)
        const cx = ((peak.index_zyx[2] + 0.5) * w) / nx;
        const cy = ((peak.index_zyx[1] + 0.5) * h) / ny;
        ctx.strokeStyle = "rgba(255,255,255,0.9)";
        ctx.lineWidth = 1.5;
        ctx.beginPath();
        ctx.arc(cx, cy, Math.max(8, w / 25), 0, 2 * Math.PI);
        ctx.stroke();
      }
      const zmm = L.slices_origin_lps_mm ? L.slices_origin_lps_mm[t][2] : null;
      $("slice-label").textContent = `${z + 1} / ${nz}${zmm != null ? ` (z ${zmm.toFixed(1)} mm)` : ""}`;
      $("opacity-label").textContent = `${Math.round(a * 100)} %`;
      viewer.tile = t;
      viewer.slice = z;
      viewer.opacity = a;
    }

    slider.addEventListener("input", draw);
    opacity.addEventListener("input", draw);
    canvas.addEventListener(
      "wheel",
      (ev) => {
        ev.preventDefault();
        const next = Number(slider.value) + (ev.deltaY > 0 ? 1 : -1);
        slider.value = String(Math.max(0, Math.min(L.slices.length - 1, next)));
        draw();
      },
      { passive: false }
    );
    $("controls").hidden = false;
    draw();
  }

  async function showExplanation(api, jobId) {
    let expl = await api(`jobs/${encodeURIComponent(jobId)}/explanation`);
    const L = expl.stats && expl.stats.layers;
    if (!L || !expl.files.heat_layer) {
      throw new ApiError(0, "no_viewer_layers", "this explanation was written without viewer layers");
    }
    $("method").textContent = `${expl.method} (model ${expl.model.name} ${expl.model.version})`;
    let images;
    for (let attempt = 0; ; attempt++) {
      try {
        const [ct, heat] = await Promise.all([
          expl.files.ct_layer ? loadImage(expl.files.ct_layer.url) : Promise.resolve(null),
          loadImage(expl.files.heat_layer.url),
        ]);
        images = { ct, heat };
        break;
      } catch (e) {
        if (attempt > 0) throw new ApiError(0, "layer_unavailable", "the layer images could not be loaded");
        expl = await api(`jobs/${encodeURIComponent(jobId)}/explanation`); // presigned URLs may have expired
      }
    }
    startViewer(expl, images);
  }

  async function main() {
    const jobId = jobIdFromPath();
    viewer.jobId = jobId;
    $("job").textContent = `job ${jobId}`;
    const token = await waitForToken(dropKeyFromUrl());
    setPhase("loading", "Loading…");
    const api = makeApi(token);
    const job = await waitForJob(api, jobId);
    if (job.state === "failed") {
      const err = job.error || { code: "failed", detail: "" };
      fail(err.code, err.detail, "Job failed");
      return;
    }
    if (job.state === "cancelled") {
      fail("job_cancelled", "the job was cancelled", "Job cancelled");
      return;
    }
    setPhase("loading", "Loading result…");
    const resultJob = job.kind === "explain" && job.parent_job_id ? job.parent_job_id : jobId;
    showResult(await api(`jobs/${encodeURIComponent(resultJob)}/result`));
    if (job.explain === "none" && job.kind !== "explain") {
      setPhase("ready", "No saliency was requested for this job (explain: none).");
    } else {
      setPhase("loading", "Loading saliency…");
      try {
        await showExplanation(api, jobId);
        setPhase("ready", "");
      } catch (e) {
        if (e instanceof ApiError && e.code === "explanation_not_found") {
          setPhase("ready", "This job has no saliency map.");
        } else {
          throw e;
        }
      }
    }
    viewer.renderMs = performance.now();
  }

  main().catch((e) => {
    if (e instanceof ApiError) {
      fail(e.code, e.detail, e.status === 401 ? "Not authorised" : "Error");
    } else {
      fail("viewer_error", String((e && e.message) || e));
    }
  });
})();
