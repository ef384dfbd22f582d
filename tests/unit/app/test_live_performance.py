"""app.performance.model_figures against ml.evaluate on the same numbers, the card's figures,
and the report files (xlsx, html) written from them; no service needed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.performance import LiveData, card_figures, model_figures
from app.performance_report import figure_rows, write_report
from app.schemas_performance import Performance, Rate
from ml.evaluate import bootstrap_ci, brier_score, ece, reliability_curve, roc_auc
from ml.evaluate.metrics import confusion_at, metric_at
from ml.model import Manifest

ROOT = Path(__file__).resolve().parents[3]
RNG = np.random.default_rng(7)
Y = np.array([0] * 12 + [1] * 8)
P = np.clip(0.25 + 0.5 * Y + RNG.normal(0, 0.2, Y.size), 0, 1)
OPS = {"balanced": 0.5, "high_sensitivity": 0.3}


def test_model_figures_are_ml_evaluates() -> None:
    f = model_figures(P, Y, OPS, n_boot=200, seed=3)
    assert (f.n, f.n_pathology, f.prevalence) == (20, 8, 0.4)
    assert f.auc.value == roc_auc(Y, P)
    assert f.auc.ci95 == bootstrap_ci(Y, P, roc_auc, n=200, seed=3)
    for name, threshold in OPS.items():
        op = f.operating_points[name]
        c = confusion_at(Y, P, threshold)
        assert (op.tp, op.fp, op.tn, op.fn) == (c.tp, c.fp, c.tn, c.fn)
        for rate in ("sensitivity", "specificity", "ppv", "npv"):
            assert getattr(op, rate).value == getattr(c, rate)
            assert getattr(op, rate).ci95 == bootstrap_ci(Y, P, metric_at(rate, threshold), n=200, seed=3)
    assert f.calibration.ece == ece(Y, P) and f.calibration.brier == brier_score(Y, P)
    _, _, counts = reliability_curve(Y, P)
    assert [b.count for b in f.calibration.bins] == counts.tolist()


def test_undefined_figures_are_null() -> None:
    empty = model_figures([], [], OPS, n_boot=10)
    assert empty.n == 0 and empty.prevalence is None and empty.auc.value is None and empty.auc.ci95 is None
    assert empty.calibration.ece is None and all(b.mean_probability is None for b in empty.calibration.bins)
    normals = model_figures([0.1, 0.7], [0, 0], OPS, n_boot=10)
    op = normals.operating_points["balanced"]
    assert normals.auc.value is None and op.sensitivity.value is None and op.specificity.value == 0.5
    assert op.sensitivity.ci95 is None and op.specificity.ci95 is not None


def test_card_figures_come_from_the_manifest() -> None:
    manifest = Manifest.load(ROOT / "weights" / "manifest.json")
    demo = card_figures(manifest.entries["resnet10-demo"])
    test = manifest.entries["resnet10-demo"].metrics["test"]
    assert demo.auc.value == test["auc"] and demo.auc.ci95 == tuple(test["auc_ci95"]) and demo.n == test["n"]
    assert set(demo.operating_points) == set(manifest.entries["resnet10-demo"].operating_points)
    other = card_figures(manifest.entries["resnet34-medicalnet"])  # a card without a test section
    assert other.auc.value == 0.91 and other.auc.ci95 is None and other.n is None


def _data(y: np.ndarray, p: np.ndarray) -> LiveData:
    manifest = Manifest.load(ROOT / "weights" / "manifest.json")
    entry = manifest.entries["resnet10-demo"]
    thresholds = {k: v.threshold for k, v in entry.operating_points.items()}
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    report = Performance(
        model=entry.name,
        version=entry.version,
        since=now - dt.timedelta(days=30),
        until=now,
        client=None,
        jobs=int(y.size),
        studies=int(y.size),
        succeeded=int(y.size),
        failed=0,
        with_feedback=int(y.size),
        ground_truth_rule="majority",
        indeterminate=Rate(count=0, of=int(y.size), rate=0.0),
        ood_flagged=Rate(count=0, of=0, rate=None),
        refusals=[],
        bootstrap=50,
        live=model_figures(p, y, thresholds, n_boot=50),
        card=card_figures(entry),
    )
    return LiveData(report, p, y)


def test_the_report_files(tmp_path: Path) -> None:
    from openpyxl import load_workbook  # type: ignore[import-untyped,unused-ignore]

    data = _data(Y, P)
    write_report(data, tmp_path / "r.xlsx")
    write_report(data, tmp_path / "r.html")
    book = load_workbook(tmp_path / "r.xlsx")
    assert book.sheetnames == ["summary", "figures", "reliability", "plots"]
    rows = list(book["figures"].iter_rows(values_only=True))
    assert rows[1][:2] == ("AUC", data.performance.live.auc.value) and len(rows) == 1 + len(
        list(figure_rows(data.performance))
    )
    page = (tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<script" not in page
    # no plots without both classes, and no failure either
    one_class = _data(np.zeros(3, dtype=np.int64), np.array([0.1, 0.2, 0.3]))
    write_report(one_class, tmp_path / "one.html")
    assert "data:image" not in (tmp_path / "one.html").read_text()
    with pytest.raises(ValueError, match=r"\.xlsx or \.html"):
        write_report(data, tmp_path / "r.pdf")


def test_the_cli_refuses_another_report_format(tmp_path: Path) -> None:
    done = CliRunner().invoke(
        cli, ["performance", "resnet10-demo", "--since", "2026-11-01", "-o", str(tmp_path / "r.pdf")]
    )
    assert done.exit_code == 2 and ".xlsx or .html" in done.output
    assert not (tmp_path / "r.pdf").exists()
