import { Niivue, NVImage, SLICE_TYPE } from "@niivue/niivue";
import { useEffect, useRef, useState } from "react";
import { type Explanation, fetchBytes } from "./api";
import { Controls, sliceKeys } from "./Controls";
import { peakOf, rasToVoxel, thresholdFraction, voxelToRas } from "./layers";

const DISPLAY_PX = 512;

export interface NiivueReady {
  niivue: Niivue;
  canvas: HTMLCanvasElement;
}

/**
 * NiiVue (WebGL2): the host's CT volume (`ctNiftiUrl`) in grey and our saliency NIfTI
 * (`files.nifti`, presigned, fetched without credentials) over it in `jet`, below
 * `threshold_fraction` · max transparent. NiiVue places each volume in RAS millimetres
 * from its own header (sform/qform), so the two line up wherever both headers describe the
 * same patient space (for the CT: a DICOM → NIfTI conversion such as dcm2niix, SimpleITK or
 * ml.explain.nifti). The slider walks the saliency grid's slices k (the DICOM series' slices):
 * the crosshair goes to voxel (i, j, k)'s RAS position (`geometry.affine_ras`). Shown in the
 * radiological convention (patient left on the screen's right), as the canvas mode and PACS.
 */
export function NiivueView(props: {
  expl: Explanation;
  ctNiftiUrl: string;
  ctNiftiName?: string;
  initialOpacity: number;
  onReady: (r: NiivueReady) => void;
  onError: (e: unknown) => void;
  onSlice?: (slice: number) => void;
}) {
  const { expl } = props;
  const canvasRef = useRef<HTMLCanvasElement>(null);
  const nvRef = useRef<Niivue | null>(null);
  const [loaded, setLoaded] = useState(false);
  const peak = peakOf(expl);
  const [nz, ny, nx] = expl.geometry.shape_zyx;
  const [slice, setSlice] = useState<number>(peak ? peak.index_zyx[0] : Math.floor(nz / 2));
  const [opacity, setOpacity] = useState(props.initialOpacity);
  const ci = peak ? peak.index_zyx[2] : (nx - 1) / 2;
  const cj = peak ? peak.index_zyx[1] : (ny - 1) / 2;

  useEffect(() => {
    const ac = new AbortController();
    const nifti = expl.files.nifti;
    let instance: Niivue | null = null;
    (async () => {
      if (!nifti) throw new Error("the explanation has no saliency NIfTI");
      const [ct, sal] = await Promise.all([
        fetchBytes(props.ctNiftiUrl, "same-origin", ac.signal),
        fetchBytes(nifti.url, "omit", ac.signal), // presigned: no credentials, no auth header
      ]);
      const nv = new Niivue({
        backColor: [0, 0, 0, 1],
        crosshairColor: [0, 0, 0, 0],
        crosshairWidth: 0,
        show3Dcrosshair: false,
        isColorbar: false,
        isRadiologicalConvention: true,
      });
      instance = nv;
      await nv.attachToCanvas(canvasRef.current as HTMLCanvasElement);
      if (ac.signal.aborted) return;
      const max = Number(expl.stats.max) || 1;
      // our own bytes (fetched above, no API auth): NVImage reads a buffer, loadVolumes would re-fetch the URL
      const ctName = props.ctNiftiName ?? "ct.nii.gz";
      const images = await Promise.all([
        NVImage.loadFromUrl({ url: ctName, buffer: ct, name: ctName, colormap: "gray" }),
        NVImage.loadFromUrl({
          url: "saliency.nii.gz",
          buffer: sal,
          name: "saliency.nii.gz",
          colormap: "jet",
          opacity: props.initialOpacity / 100,
          cal_min: thresholdFraction(expl) * max,
          cal_max: max,
        }),
      ]);
      if (ac.signal.aborted) return;
      for (const image of images) nv.addVolume(image);
      if (ac.signal.aborted) return;
      nv.setSliceType(SLICE_TYPE.AXIAL);
      // NiiVue's own navigation (scroll wheel, its keys) moves the crosshair: the slider follows
      nv.onLocationChange = () => {
        const k = Math.round(rasToVoxel(expl, nv.frac2mm(nv.scene.crosshairPos))[2]);
        if (k >= 0 && k < nz) setSlice(k);
      };
      nvRef.current = nv;
      setLoaded(true);
    })().catch((err) => {
      if (!ac.signal.aborted) props.onError(err);
    });
    return () => {
      ac.abort();
      instance?.cleanup(); // its listeners and observers; the canvas goes with the component
      nvRef.current = null;
    };
  }, [expl, props.ctNiftiUrl]); // eslint-disable-line react-hooks/exhaustive-deps

  useEffect(() => {
    const nv = nvRef.current;
    if (!nv || !loaded) return;
    nv.scene.crosshairPos = nv.mm2frac(voxelToRas(expl, ci, cj, slice));
    nv.setOpacity(1, opacity / 100);
    nv.drawScene();
    props.onSlice?.(slice);
  }, [loaded, slice, opacity]); // eslint-disable-line react-hooks/exhaustive-deps

  useEffect(() => {
    if (loaded && nvRef.current && canvasRef.current) props.onReady({ niivue: nvRef.current, canvas: canvasRef.current });
  }, [loaded]); // eslint-disable-line react-hooks/exhaustive-deps

  const zmm = expl.geometry.affine_ras ? voxelToRas(expl, ci, cj, slice)[2] : null; // RAS z = LPS z
  const sliceText = `${slice + 1} / ${nz}${zmm != null ? ` (z ${zmm.toFixed(1)} mm)` : ""}`;
  return (
    <div className="s4ct-niivue-view">
      <div style={{ width: DISPLAY_PX, height: DISPLAY_PX, background: "#000" }}>
        <canvas
          ref={canvasRef}
          className="s4ct-image"
          tabIndex={0}
          role="img"
          aria-label={`CT volume, axial slice ${sliceText}, with the saliency NIfTI at ${opacity} % opacity. Arrow keys change the slice.`}
          onKeyDown={(e) => sliceKeys(e, slice, nz, setSlice)}
        />
      </div>
      <Controls slice={slice} sliceCount={nz} sliceText={sliceText} opacity={opacity} onSlice={setSlice} onOpacity={setOpacity} />
    </div>
  );
}
