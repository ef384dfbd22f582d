/**
 * The demo page of @service4ct/react: a form (API base, key or viewer token, job id, mode, CT
 * NIfTI URL) and the viewer. The key stays in memory: never in the address, never stored.
 * `window.s4ctDemo.start({...})` does what the form does (tests); `window.s4ctDemo.state` is the
 * viewer's last state.
 */
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { SaliencyViewer, type ViewerState } from "../react/src/index";

interface StartOptions {
  apiBase: string;
  apiKey: string;
  jobId: string;
  mode: "canvas" | "niivue";
  ctNiftiUrl?: string;
}

declare global {
  interface Window {
    s4ctDemo: { start: (o: StartOptions) => void; state: ViewerState | null };
  }
}

const root = createRoot(document.getElementById("viewer") as HTMLElement);
window.s4ctDemo = {
  state: null,
  start(o: StartOptions) {
    window.s4ctDemo.state = null;
    root.render(
      <StrictMode>
        <SaliencyViewer
          key={`${o.jobId}-${o.mode}`}
          jobId={o.jobId}
          apiBase={o.apiBase}
          apiKey={o.apiKey}
          mode={o.mode}
          ctNiftiUrl={o.ctNiftiUrl || undefined}
          onState={(s) => {
            window.s4ctDemo.state = s;
            document.documentElement.dataset.state = s.phase;
          }}
        />
      </StrictMode>
    );
  },
};

const form = document.getElementById("demo-form") as HTMLFormElement;
form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const v = (name: string) => (form.elements.namedItem(name) as HTMLInputElement).value.trim();
  const key = form.elements.namedItem("apiKey") as HTMLInputElement;
  window.s4ctDemo.start({
    apiBase: v("apiBase"),
    apiKey: key.value.trim(),
    jobId: v("jobId"),
    mode: v("mode") as "canvas" | "niivue",
    ctNiftiUrl: v("ctNiftiUrl"),
  });
  key.value = ""; // in memory only
});
