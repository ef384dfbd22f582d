// The TypeScript client (compiled to dist/) against a running Service4CT with a worker.
// Run by tests/integration/test_client_typescript.py, which starts the service and sets:
//   S4CT_API_BASE, S4CT_API_KEY, S4CT_STUDY_ZIP (a phantom study ZIP with a lesion)
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { Service4CTClient, Service4CTError } from "../dist/index.js";

const apiBase = process.env.S4CT_API_BASE;
const apiKey = process.env.S4CT_API_KEY;
const zipPath = process.env.S4CT_STUDY_ZIP;
if (!apiBase || !apiKey || !zipPath) throw new Error("set S4CT_API_BASE, S4CT_API_KEY and S4CT_STUDY_ZIP");

async function collect(iterable) {
  const out = [];
  for await (const item of iterable) out.push(item);
  return out;
}

/** A fetcher that records what was sent (the host app's own fetch, adding the auth). */
function recordingFetcher(sent) {
  return (input, init = {}) => {
    const headers = new Headers(init.headers);
    headers.set("Authorization", `Bearer ${apiKey}`);
    sent.push({ url: input, method: init.method, headers });
    return fetch(input, { ...init, headers });
  };
}

test("upload, predict, wait, result, explanation, viewer token", async () => {
  const sent = [];
  const client = new Service4CTClient({ apiBase, fetcher: recordingFetcher(sent) });
  const zip = new Uint8Array(readFileSync(zipPath));
  const study = await client.uploadStudy(zip, { multipart: true, clientRef: "ts-client", metadata: { row: 1 } });
  assert.equal(study.client_ref, "ts-client");
  assert.deepEqual(study.metadata, { row: 1 });
  const again = await client.uploadStudy(zip); // raw body, same bytes: the stored study
  assert.equal(again.study_id, study.study_id);
  assert.equal(again.existing, true);

  const accepted = await client.predict({ study_id: study.study_id, explain: "gradcam", client_ref: "ts-job" });
  assert.equal(accepted.state, "queued");
  const states = [];
  const final = await client.waitForJob(accepted.job_id, {
    initialDelayMs: 200,
    timeoutMs: 240_000,
    onStatus: (s) => states.push(s.state),
  });
  assert.equal(final.state, "succeeded", JSON.stringify(final.error));
  assert.ok(states.length >= 1);

  const result = await client.result(accepted.job_id);
  assert.ok(result.probability >= 0 && result.probability <= 1);
  assert.equal(result.client_ref, "ts-job");
  const explanation = await client.explanation(accepted.job_id);
  assert.equal(explanation.method, "gradcam");
  assert.ok(explanation.files.nifti.url.startsWith("http"));
  assert.equal(explanation.stats.nifti.file, "saliency.nii.gz");
  const token = await client.viewerToken(accepted.job_id);
  assert.equal(token.token_type, "Bearer");
  assert.ok(token.jobs.includes(accepted.job_id));

  const models = await client.models();
  assert.ok(models.models.some((m) => m.name === models.default));

  const given = await client.giveFeedback(accepted.job_id, { ground_truth: "pathology", reader: "ts-reader" });
  assert.equal(given.ground_truth, "pathology");
  const history = await client.feedback(accepted.job_id);
  assert.equal(history.history.length, 1);
  assert.equal((await client.getJob(accepted.job_id)).feedback.readers[0].reader, "ts-reader");
  const perf = await client.performance(final.model);
  assert.ok(perf.with_feedback >= 1);
  await assert.rejects(client.giveFeedback(accepted.job_id, { ground_truth: "pathology", reader: "a b" }), (e) => {
    assert.ok(e instanceof Service4CTError);
    assert.equal(e.code, "validation_error");
    return true;
  });

  // every POST carried an Idempotency-Key, no URL carried the key
  const posts = sent.filter((r) => r.method === "POST");
  assert.ok(posts.length >= 4);
  for (const r of posts) assert.match(r.headers.get("Idempotency-Key"), /^[0-9a-f-]{36}$/);
  for (const r of sent) assert.ok(!r.url.includes(apiKey));
});

test("the same Idempotency-Key creates one job", async () => {
  const client = new Service4CTClient({ apiBase, apiKey });
  const [study] = await collect(client.studies({ client_ref: "ts-client" }));
  assert.ok(study);
  const key = crypto.randomUUID();
  const a = await client.predict({ study_id: study.study_id, explain: "none" }, { idempotencyKey: key });
  const b = await client.predict({ study_id: study.study_id, explain: "none" }, { idempotencyKey: key });
  assert.equal(a.job_id, b.job_id);
  const cancelled = await client.cancelJob(a.job_id);
  assert.ok(["cancelled", "succeeded", "running"].includes(cancelled.state), cancelled.state);
  const final = await client.waitForJob(a.job_id, { initialDelayMs: 100, timeoutMs: 120_000 });
  await client.deleteJob(a.job_id);
  await assert.rejects(client.getJob(a.job_id), (e) => e instanceof Service4CTError && e.status === 404);
  assert.ok(["cancelled", "succeeded"].includes(final.state));
});

test("pagination walks every page", async () => {
  const client = new Service4CTClient({ apiBase, apiKey });
  const [study] = await collect(client.studies({ limit: 1 }));
  const ids = [];
  for (let i = 0; i < 3; i++) {
    const job = await client.predict({ study_id: study.study_id, explain: "none", client_ref: "ts-page" });
    ids.push(job.job_id);
    await client.cancelJob(job.job_id);
  }
  const first = await client.listJobs({ client_ref: "ts-page", limit: 2 });
  assert.equal(first.items.length, 2);
  assert.notEqual(first.next_cursor, null);
  const seen = [];
  for await (const job of client.jobs({ client_ref: "ts-page", limit: 2 })) seen.push(job.job_id);
  assert.deepEqual([...seen].sort(), [...ids].sort());
  const studies = await collect(client.studies({ limit: 1 }));
  assert.ok(studies.length >= 1);
});

test("error answers become Service4CTError with the stable code", async () => {
  const client = new Service4CTClient({ apiBase, apiKey });
  const missing = "00000000-0000-4000-8000-000000000000";
  await assert.rejects(client.getJob(missing), (e) => {
    assert.ok(e instanceof Service4CTError);
    assert.equal(e.code, "job_not_found");
    assert.equal(e.status, 404);
    assert.ok(e.requestId);
    return true;
  });
  await assert.rejects(client.predict({ study_id: missing, explain: "magic" }), (e) => {
    assert.equal(e.code, "validation_error");
    assert.equal(e.status, 422);
    return true;
  });
  await assert.rejects(
    client.predict({ study_id: missing, explain: "integrated_gradients", explain_params: { steps: 0 } }),
    (e) => e.code === "validation_error" && e.detail.includes("steps"),
  );
  const stranger = new Service4CTClient({ apiBase, apiKey: "s4ct_not-a-key" });
  await assert.rejects(stranger.models(), (e) => e.code === "unauthorized" && e.status === 401);
  assert.throws(() => new Service4CTClient({ apiBase }), TypeError);
});
