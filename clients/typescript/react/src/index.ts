export { ApiError, type Explanation, type Fetcher, type JobResult, type JobStatus, makeGetJson } from "./api";
export { layersOf, peakOf, type Peak, type ViewerLayers, voxelToRas } from "./layers";
export { ResultPanel } from "./ResultPanel";
export { SaliencyViewer, type SaliencyViewerProps, type ViewerPhase, type ViewerState } from "./SaliencyViewer";
