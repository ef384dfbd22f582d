import type { KeyboardEvent } from "react";

export interface ControlsProps {
  slice: number;
  sliceCount: number;
  sliceText: string;
  opacity: number; // 0–100 %
  onSlice: (s: number) => void;
  onOpacity: (o: number) => void;
}

/**
 * Slice and opacity sliders: native range inputs, so arrows, Page Up/Down, Home and End work
 * from the keyboard, each with a label and a spoken value (`aria-valuetext`).
 */
export function Controls(p: ControlsProps) {
  return (
    <div className="s4ct-controls" style={{ display: "grid", gridTemplateColumns: "auto 1fr auto", gap: "4px 8px", alignItems: "center" }}>
      <label htmlFor="s4ct-slice">Slice</label>
      <input
        id="s4ct-slice"
        className="s4ct-slice"
        type="range"
        min={0}
        max={Math.max(0, p.sliceCount - 1)}
        step={1}
        value={p.slice}
        aria-valuetext={p.sliceText}
        onChange={(e) => p.onSlice(Number(e.currentTarget.value))}
      />
      <output htmlFor="s4ct-slice" className="s4ct-slice-label">
        {p.sliceText}
      </output>
      <label htmlFor="s4ct-opacity">Heat opacity</label>
      <input
        id="s4ct-opacity"
        className="s4ct-opacity"
        type="range"
        min={0}
        max={100}
        step={5}
        value={p.opacity}
        aria-valuetext={`${p.opacity} percent`}
        onChange={(e) => p.onOpacity(Number(e.currentTarget.value))}
      />
      <output htmlFor="s4ct-opacity" className="s4ct-opacity-label">
        {p.opacity} %
      </output>
    </div>
  );
}

/** Arrow/Page keys on the image itself step the slice (the image is focusable). */
export function sliceKeys(e: KeyboardEvent, slice: number, count: number, onSlice: (s: number) => void): void {
  const step = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 10, PageDown: -10 }[e.key];
  if (step === undefined) return;
  e.preventDefault();
  onSlice(Math.max(0, Math.min(count - 1, slice + step)));
}
