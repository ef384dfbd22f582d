/**
 * The explanation's geometry as the viewer uses it.
 *
 * `stats.layers` (ml.explain.files.write_saliency) is the PNG sprites' grid: tile t sits at
 * column t % columns, row floor(t / columns), `tile_px` [w, h] pixels, and shows series slice
 * `slices[t]` (index z of `geometry.shape_zyx`); `pixel_mm` [x, y] is the physical size of a
 * tile pixel, so a tile drawn at that aspect shows the slice undistorted. `geometry.affine_ras`
 * maps a voxel (i = column, j = row, k = slice) of the saliency NIfTI to RAS millimetres
 * (patient space; LPS with x and y negated): the frame NiiVue draws in.
 */
import type { Explanation } from "./api";

export interface ViewerLayers {
  columns: number;
  tile_px: [number, number];
  pixel_mm?: [number, number];
  slices: number[];
  slices_origin_lps_mm?: [number, number, number][];
  source_shape_zyx: [number, number, number];
  peak_tile?: number | null;
  heat?: { threshold_fraction?: number };
}

export interface Peak {
  index_zyx: [number, number, number];
  lps_mm: [number, number, number];
}

export function layersOf(expl: Explanation): ViewerLayers | null {
  const L = expl.stats.layers as unknown as ViewerLayers | null | undefined;
  return L && Array.isArray(L.slices) && L.slices.length > 0 ? L : null;
}

export function peakOf(expl: Explanation): Peak | null {
  return (expl.stats.peak as unknown as Peak | null | undefined) ?? null;
}

/** RAS mm of voxel (i, j, k) of the saliency grid (`geometry.affine_ras`, 4×4 row-major). */
export function voxelToRas(expl: Explanation, i: number, j: number, k: number): [number, number, number] {
  const A = expl.geometry.affine_ras;
  if (!A) throw new Error("the explanation has no affine_ras");
  const r = [0, 1, 2].map((row) => A[row][0] * i + A[row][1] * j + A[row][2] * k + A[row][3]);
  return [r[0], r[1], r[2]];
}

/** Heat below this fraction of the map's maximum is not drawn (the layers' own threshold). */
export function thresholdFraction(expl: Explanation): number {
  return layersOf(expl)?.heat?.threshold_fraction ?? 0.2;
}

const det3 = (m: number[][]): number =>
  m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) -
  m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
  m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);

/** Voxel (i, j, k) of the saliency grid at RAS mm `p`: the inverse of {@link voxelToRas} (Cramer's rule). */
export function rasToVoxel(expl: Explanation, p: ArrayLike<number>): [number, number, number] {
  const A = expl.geometry.affine_ras;
  if (!A) throw new Error("the explanation has no affine_ras");
  const M = [0, 1, 2].map((r) => A[r].slice(0, 3));
  const d = [0, 1, 2].map((r) => p[r] - A[r][3]);
  const det = det3(M);
  const solve = (c: number): number => det3(M.map((row, r) => row.map((v, k) => (k === c ? d[r] : v)))) / det;
  return [solve(0), solve(1), solve(2)];
}
