/** Named shortcuts to the generated OpenAPI types (src/schema.d.ts). */
import type { components, operations, paths } from "./schema.js";

export type { components, operations, paths };

type Schemas = components["schemas"];

export type ErrorBody = Schemas["ErrorBody"];
export type StudyOut = Schemas["StudyOut"];
export type StudyPage = Schemas["StudyPage"];
export type StudySeries = Schemas["StudySeries"];
export type JobCreate = Schemas["JobCreate"];
export type PredictRequest = Schemas["PredictRequest"];
export type ExplainRequest = Schemas["ExplainRequest"];
export type JobAccepted = Schemas["JobAccepted"];
export type JobStatus = Schemas["JobStatus"];
export type JobPage = Schemas["JobPage"];
export type JobResult = Schemas["JobResult"];
export type Explanation = Schemas["Explanation"];
export type ExplanationStats = Schemas["ExplanationStats"];
export type SourceGeometry = Schemas["SourceGeometry"];
export type BlobLink = Schemas["BlobLink"];
export type ModelsOut = Schemas["ModelsOut"];
export type ModelCard = Schemas["ModelCard"];
export type ViewerToken = Schemas["ViewerToken"];
export type DicomList = Schemas["DicomList"];
export type WebhookSettings = Schemas["WebhookSettings"];
export type FeedbackCreate = Schemas["FeedbackCreate"];
export type JobFeedback = Schemas["JobFeedback"];
export type FeedbackHistory = Schemas["FeedbackHistory"];
export type Performance = Schemas["Performance"];
/** Query of GET /v1/models/{name}/performance. */
export type PerformanceQuery = NonNullable<paths["/v1/models/{name}/performance"]["get"]["parameters"]["query"]>;
export type ExplainParams =
  | Schemas["GradCamParams"]
  | Schemas["IntegratedGradientsParams"]
  | Schemas["SaliencyParams"]
  | Schemas["OcclusionParams"];

/** A job's state; `succeeded`, `failed` and `cancelled` are final. */
export type JobState = JobStatus["state"];
/** Filters of GET /v1/jobs (without the page's `cursor`). */
export type JobFilters = Omit<NonNullable<paths["/v1/jobs"]["get"]["parameters"]["query"]>, "cursor">;
/** Filters of GET /v1/studies (without the page's `cursor`). */
export type StudyFilters = Omit<NonNullable<paths["/v1/studies"]["get"]["parameters"]["query"]>, "cursor">;
