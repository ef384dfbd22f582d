import type { JobResult } from "./api";

/** Colours of the decisions: an indeterminate study is amber and its probability grey, never red. */
export const COLORS = { pathology: "#c62828", normal: "#2e7d32", indeterminate: "#b26a00", muted: "#6b6b6b" };

function fmt(v: number | null | undefined, digits: number): string {
  return v == null ? "–" : Number(v).toFixed(digits);
}

const colorOf = (label: string): string => COLORS[label as keyof typeof COLORS] ?? "inherit";

/** Probability, label, the decision at each operating point, the indeterminate state and its reasons. */
export function ResultPanel({ result }: { result: JobResult }) {
  const indeterminate = result.label === "indeterminate";
  const reasons = result.indeterminate_reasons ?? [];
  const ood = result.ood;
  const m = result.model;
  return (
    <section className="s4ct-result" data-label={result.label} aria-label="Result" style={{ maxWidth: 440 }}>
      {result.not_for_clinical_use && (
        <p className="s4ct-banner" role="note" style={{ background: "#fff3cd", padding: "4px 8px", fontWeight: 600 }}>
          NOT FOR CLINICAL USE — research/demo model, not validated for diagnosis or triage
        </p>
      )}
      <p>
        Probability:{" "}
        <span
          className={indeterminate ? "s4ct-probability muted" : "s4ct-probability"}
          style={{ color: indeterminate ? COLORS.muted : "inherit" }}
        >
          {(100 * result.probability).toFixed(1)} %{indeterminate ? " (not a decision)" : ""}
        </span>
      </p>
      <p role="status" aria-live="polite">
        Label:{" "}
        <strong className={`s4ct-label ${result.label}`} style={{ color: colorOf(result.label) }}>
          {indeterminate ? "indeterminate: the model cannot judge this study" : result.label}
        </strong>
      </p>
      {indeterminate && (
        <div className="s4ct-indeterminate" role="alert" style={{ borderLeft: `4px solid ${COLORS.indeterminate}`, paddingLeft: 8 }}>
          {reasons.length > 0 && <p className="s4ct-reasons">Reasons: {reasons.join(", ")}</p>}
          {ood && (
            <p className="s4ct-ood">
              Out-of-distribution check ({ood.method}): score {fmt(ood.score, 1)}, threshold {fmt(ood.threshold, 1)}
              {ood.flagged ? " — flagged" : ""}
            </p>
          )}
        </div>
      )}
      <table className="s4ct-decisions" style={{ fontSize: "0.9em" }}>
        <caption>Decision at each operating point (* default)</caption>
        <thead>
          <tr>
            <th scope="col">operating point</th>
            <th scope="col">threshold</th>
            <th scope="col">decision</th>
            <th scope="col">
              <abbr title="sensitivity">sens.</abbr>
            </th>
            <th scope="col">
              <abbr title="specificity">spec.</abbr>
            </th>
          </tr>
        </thead>
        <tbody>
          {Object.entries(result.operating_points ?? {}).map(([name, op]) => {
            const decision = result.decision?.[name] ?? "–";
            return (
              <tr key={name} data-op={name}>
                <th scope="row">{name + (name === result.operating_point ? " *" : "")}</th>
                <td>{fmt(op.threshold, 3)}</td>
                <td className={`s4ct-decision ${decision}`} data-decision={decision} style={{ color: colorOf(decision) }}>
                  {decision}
                </td>
                <td>{fmt(op.sensitivity, 2)}</td>
                <td>{fmt(op.specificity, 2)}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
      {m && (
        <p className="s4ct-model">
          Model {m.name} {m.version}
        </p>
      )}
    </section>
  );
}
