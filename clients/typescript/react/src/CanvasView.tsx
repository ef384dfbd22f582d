import { useEffect, useRef, useState } from "react";
import type { Explanation } from "./api";
import { Controls, sliceKeys } from "./Controls";
import { layersOf, peakOf, type ViewerLayers } from "./layers";

const DISPLAY_PX = 512; // long side of the displayed slice, CSS pixels

function loadImage(url: string): Promise<HTMLImageElement> {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.decoding = "async";
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("a layer image failed to load"));
    img.src = url; // no crossOrigin: drawn only, never read back (a tainted canvas is fine)
  });
}

export interface CanvasReady {
  canvas: HTMLCanvasElement;
  layers: ViewerLayers;
}

/**
 * The PNG layers the service writes (`ct_layer` grey CT, `heat_layer` RGBA heat), one tile per
 * slice, drawn at the physical aspect (`pixel_mm`): the CT tile, then the heat tile at the
 * chosen opacity. `refresh` re-reads the explanation when a presigned URL has expired.
 */
export function CanvasView(props: {
  expl: Explanation;
  refresh: () => Promise<Explanation>;
  initialOpacity: number;
  onReady: (r: CanvasReady) => void;
  onError: (e: unknown) => void;
  onSlice?: (slice: number) => void;
}) {
  const { expl } = props;
  const L = layersOf(expl);
  const canvasRef = useRef<HTMLCanvasElement>(null);
  const [images, setImages] = useState<{ ct: HTMLImageElement | null; heat: HTMLImageElement } | null>(null);
  const [tile, setTile] = useState<number>(L?.peak_tile ?? 0);
  const [opacity, setOpacity] = useState(props.initialOpacity);

  useEffect(() => {
    let live = true;
    (async () => {
      let e = expl;
      for (let attempt = 0; ; attempt++) {
        try {
          const [ct, heat] = await Promise.all([
            e.files.ct_layer ? loadImage(e.files.ct_layer.url) : Promise.resolve(null),
            loadImage(e.files.heat_layer.url),
          ]);
          if (live) setImages({ ct, heat });
          return;
        } catch (err) {
          if (attempt > 0) throw err;
          e = await props.refresh(); // presigned URLs may have expired
        }
      }
    })().catch((err) => live && props.onError(err));
    return () => {
      live = false;
    };
  }, [expl]); // eslint-disable-line react-hooks/exhaustive-deps

  const [tw, th] = L ? L.tile_px : [1, 1];
  const [px, py] = L?.pixel_mm ?? [1, 1];
  const k = DISPLAY_PX / Math.max(tw * px, th * py);
  const w = Math.round(tw * px * k);
  const h = Math.round(th * py * k);

  useEffect(() => {
    const canvas = canvasRef.current;
    if (!canvas || !images || !L) return;
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    // setting canvas.width reset the context: alpha 1, fill black, smoothing on
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.imageSmoothingQuality = "high";
    ctx.fillRect(0, 0, w, h);
    const drawTile = (img: CanvasImageSource, alpha: number): void => {
      ctx.globalAlpha = alpha;
      ctx.drawImage(img, (tile % L.columns) * tw, Math.floor(tile / L.columns) * th, tw, th, 0, 0, w, h);
    };
    if (images.ct) drawTile(images.ct, 1);
    if (opacity > 0) drawTile(images.heat, opacity / 100);
    props.onSlice?.(L.slices[tile]);
  }, [images, tile, opacity, w, h]); // eslint-disable-line react-hooks/exhaustive-deps

  useEffect(() => {
    if (images && L && canvasRef.current) props.onReady({ canvas: canvasRef.current, layers: L });
  }, [images]); // eslint-disable-line react-hooks/exhaustive-deps

  if (!L || !expl.files.heat_layer) {
    return <p className="s4ct-note">This explanation was written without viewer layers.</p>;
  }
  const nz = L.source_shape_zyx[0];
  const z = L.slices[tile];
  const zmm = L.slices_origin_lps_mm?.[tile]?.[2];
  const peak = peakOf(expl);
  const sliceText = `${z + 1} / ${nz}${zmm != null ? ` (z ${zmm.toFixed(1)} mm)` : ""}`;
  return (
    <div className="s4ct-canvas-view">
      <canvas
        ref={canvasRef}
        className="s4ct-image"
        style={{ width: w, height: h, display: "block", background: "#000" }}
        tabIndex={0}
        role="img"
        aria-label={`CT slice ${sliceText} with the saliency heatmap at ${opacity} % opacity${
          peak ? `; the peak is on slice ${peak.index_zyx[0] + 1}` : ""
        }. Arrow keys change the slice.`}
        onKeyDown={(e) => sliceKeys(e, tile, L.slices.length, setTile)}
        onWheel={(e) => setTile((t) => Math.max(0, Math.min(L.slices.length - 1, t + (e.deltaY > 0 ? 1 : -1))))}
      />
      <Controls
        slice={tile}
        sliceCount={L.slices.length}
        sliceText={sliceText}
        opacity={opacity}
        onSlice={setTile}
        onOpacity={setOpacity}
      />
    </div>
  );
}
