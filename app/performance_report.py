"""The live-performance report as a spreadsheet (``.xlsx``) or a self-contained HTML page,
with the ROC and calibration plots of ml.evaluate (PNG, embedded).

Both carry the same figures as ``GET /v1/models/{name}/performance``: one row per figure, the
live value and CI next to the model card's.
"""

from __future__ import annotations

import base64
import html
import tempfile
from collections.abc import Iterator
from pathlib import Path

from app.performance import LiveData
from app.schemas_performance import Estimate, Performance
from ml.evaluate import plot_calibration, plot_roc

__all__ = ["figure_rows", "write_report"]

#: one table row: figure, live value, live CI, card value, card CI
Row = tuple[str, float | None, str, float | None, str]


def _ci(e: Estimate | None) -> str:
    return "" if e is None or e.ci95 is None else f"{e.ci95[0]:.3f}–{e.ci95[1]:.3f}"


def _v(e: Estimate | None) -> float | None:
    return None if e is None else e.value


def figure_rows(report: Performance) -> Iterator[Row]:
    """The figures of ``report``, live beside the card's (the card has no PPV, NPV or ECE)."""
    live, card = report.live, report.card
    yield "AUC", live.auc.value, _ci(live.auc), card.auc.value, _ci(card.auc)
    for name, op in live.operating_points.items():
        on_card = card.operating_points.get(name)
        for rate in ("sensitivity", "specificity", "ppv", "npv"):
            mine: Estimate = getattr(op, rate)
            theirs: Estimate | None = getattr(on_card, rate, None)
            yield f"{name} (≥ {op.threshold:.4f}): {rate}", mine.value, _ci(mine), _v(theirs), _ci(theirs)
    yield "ECE", live.calibration.ece, "", None, ""
    yield "Brier score", live.calibration.brier, "", None, ""


def _counts(report: Performance) -> list[tuple[str, str]]:
    r = report
    out = [
        ("model", f"{r.model} {r.version}"),
        ("window", f"{r.since.isoformat()} – {r.until.isoformat()}"),
        ("client", r.client or "every client"),
        ("prediction jobs", str(r.jobs)),
        ("studies", str(r.studies)),
        ("succeeded / failed", f"{r.succeeded} / {r.failed}"),
        ("with feedback", f"{r.with_feedback} ({r.live.n_pathology} pathology)"),
        ("ground truth", r.ground_truth_rule),
        ("indeterminate", _rate(r.indeterminate.count, r.indeterminate.of)),
        ("OOD flagged", _rate(r.ood_flagged.count, r.ood_flagged.of)),
        ("card evaluated on", f"{r.card.evaluated_on or '-'} (n = {r.card.n or '-'})"),
        ("CIs", f"stratified percentile bootstrap, {r.bootstrap} resamples, seed 0"),
    ]
    out += [(f"refused: {x.code}", _rate(x.count, x.of)) for x in r.refusals]
    for sh in r.shadows:
        auc = f"AUC {_fmt(sh.live.auc.value)} ({_ci(sh.live.auc) or 'no CI'})"
        primary = sh.primary_live.auc
        same = f"primary on the same jobs {_fmt(primary.value)} ({_ci(primary) or 'no CI'})"
        out += [
            (f"shadow {sh.model} {sh.version}", f"{sh.paired} jobs paired, {sh.with_feedback} with feedback"),
            (f"shadow {sh.model}: agreement", _rate(sh.agreement.count, sh.agreement.of)),
            (f"shadow {sh.model}: AUC", f"{auc}; {same}"),
        ]
    return out


def _rate(count: int, of: int) -> str:
    return f"{count} of {of}" + (f" ({count / of:.1%})" if of else "")


def _plots(data: LiveData, work: Path) -> list[Path]:
    """ROC and calibration PNGs of the live pairs (none without both classes)."""
    y, p = data.labels, data.probabilities
    if y.size == 0 or y.min() == y.max():
        return []
    report = data.performance
    points = {
        name: (1.0 - (op.specificity.value or 0.0), op.sensitivity.value or 0.0)
        for name, op in report.live.operating_points.items()
    }
    roc, calibration = work / "roc.png", work / "calibration.png"
    plot_roc({report.model: (y, p)}, roc, title=f"ROC, live ({y.size} studies)", operating_points=points)
    plot_calibration(y, p, calibration, title="Calibration, live")
    return [roc, calibration]


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _html(data: LiveData, images: list[Path]) -> str:
    r = data.performance
    esc = html.escape
    counts = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in _counts(r))
    rows = "".join(
        f"<tr><td>{esc(f)}</td><td>{_fmt(v)}</td><td>{esc(ci)}</td><td>{_fmt(cv)}</td><td>{esc(cci)}</td></tr>"
        for f, v, ci, cv, cci in figure_rows(r)
    )
    bins = "".join(
        f"<tr><td>{b.lower:.1f}–{b.upper:.1f}</td><td>{b.count}</td>"
        f"<td>{_fmt(b.mean_probability)}</td><td>{_fmt(b.fraction_pathology)}</td></tr>"
        for b in r.live.calibration.bins
    )
    pictures = "".join(
        f'<img alt="{esc(p.stem)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in images
    )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}"
        "img{max-width:48%;margin-right:1%;vertical-align:top}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Live performance: {esc(r.model)}</title>"
        f"<style>{style}</style></head><body><h1>Live performance: {esc(r.model)}</h1>"
        f"<table>{counts}</table><h2>Figures (live against the model card's test set)</h2>"
        "<table><tr><th>figure</th><th>live</th><th>live 95 % CI</th><th>card</th><th>card 95 % CI</th>"
        f"</tr>{rows}</table><h2>Reliability bins</h2><table><tr><th>probability</th><th>studies</th>"
        f"<th>mean probability</th><th>fraction pathology</th></tr>{bins}</table>{pictures}</body></html>"
    )


def _xlsx(data: LiveData, images: list[Path], path: Path) -> None:
    from openpyxl import Workbook  # type: ignore[import-untyped,unused-ignore]
    from openpyxl.drawing.image import Image  # type: ignore[import-untyped,unused-ignore]

    r = data.performance
    book = Workbook()
    summary = book.active
    assert summary is not None
    summary.title = "summary"
    for pair in _counts(r):
        summary.append(pair)
    figures = book.create_sheet("figures")
    figures.append(("figure", "live", "live 95 % CI", "card", "card 95 % CI"))
    for row in figure_rows(r):
        figures.append(row)
    bins = book.create_sheet("reliability")
    bins.append(("from", "to", "studies", "mean probability", "fraction pathology"))
    for b in r.live.calibration.bins:
        bins.append((b.lower, b.upper, b.count, b.mean_probability, b.fraction_pathology))
    if images:
        plots = book.create_sheet("plots")
        for i, image in enumerate(images):
            plots.add_image(Image(str(image)), f"{'AK'[i % 2]}1")
    book.save(path)


def write_report(data: LiveData, path: Path) -> None:
    """Write ``data`` to ``path``: ``.xlsx`` or ``.html`` (ValueError for another suffix)."""
    suffix = path.suffix.lower()
    if suffix not in (".xlsx", ".html", ".htm"):
        raise ValueError(f"the report must end in .xlsx or .html, not {path.name!r}")
    with tempfile.TemporaryDirectory(prefix="s4ct-report-") as tmp:
        images = _plots(data, Path(tmp))
        if suffix == ".xlsx":
            _xlsx(data, images, path)
        else:
            path.write_text(_html(data, images), encoding="utf-8")
