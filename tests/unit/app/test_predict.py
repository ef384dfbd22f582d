"""``service4ct predict`` (app.predict): batch report, resumability, error rows, no identifiers in logs.

Tiny ResNet-10 at 32³ in a temporary manifest; phantom studies at their default small size.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from openpyxl import load_workbook
from typer.testing import CliRunner

from app.logs import setup_logging
from app.predict import predict_command, run_batch
from app.report_files import ReportError, read_report
from ml.errors import ModelUnavailable
from ml.explain.methods import body_mask
from ml.inference import Predictor
from ml.io import read_study
from ml.model import Manifest, ModelEntry, ModelSpec, OODRef, OperatingPoint
from ml.model.checkpoint import save_weights
from ml.model.network import build_model
from ml.ood import fit_ood
from ml.phantom import PHI_IDENTIFIERS, make_family, make_study, write_family_study
from ml.preprocess import PreprocessConfig

ROOT = Path(__file__).resolve().parents[3]
SIZE = 32
EXPECTED = {  # file → (status, error_code)
    "a.zip": ("ok", None),
    "b.zip": ("ok", None),
    "sub/c.zip": ("ok", None),
    "corrupt.zip": ("error", "zip_invalid"),
    "mr.zip": ("error", "not_ct"),
    "phi.zip": ("ok", None),
}
IDENTIFIERS = [
    PHI_IDENTIFIERS.patient_id,
    PHI_IDENTIFIERS.patient_name,
    "PHIPATIENT",
    PHI_IDENTIFIERS.birth_date,
    PHI_IDENTIFIERS.accession_number,
    "PHI GENERAL HOSPITAL",
]


def _entry(sha: str) -> ModelEntry:
    return ModelEntry(
        name="tiny",
        version="0.0.1",
        spec=ModelSpec(arch="resnet10"),
        input_size=(SIZE, SIZE, SIZE),
        # coarse intermediate grid: the manifest owns preprocessing, and 1 mm would cost ~1 s per study
        preprocess=PreprocessConfig(target_size=(SIZE, SIZE, SIZE), spacing_mm=(6.0, 6.0, 6.0)),
        operating_points={
            "balanced": OperatingPoint(0.5, 0.9, 0.8, (0.8, 0.95), (0.7, 0.9)),
            "high_sensitivity": OperatingPoint(0.0, 1.0, 0.0),  # everything is pathology
        },
        default_operating_point="balanced",
        uri="tiny.pt",
        sha256=sha,
        calibration={"method": "temperature", "temperature": 1.5},
    )


def tiny_manifest(d: Path) -> Path:
    """A manifest in ``d`` with one seeded, untrained 32³ model ``tiny``."""
    torch.manual_seed(0)
    sha = save_weights(build_model(ModelSpec(arch="resnet10")), d / "tiny.pt", dtype="float32")
    Manifest(entries={"tiny": _entry(sha)}, default="tiny").save(d / "manifest.json")
    return d / "manifest.json"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_manifest(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("studies")
    (d / "sub").mkdir()
    make_study(d / "a.zip", seed=1)
    make_study(d / "b.zip", seed=2)
    make_study(d / "sub" / "c.zip", seed=3)
    make_study(d / "mr.zip", seed=4, variant="non_ct")
    make_study(d / "phi.zip", seed=5, variant="phi")
    (d / "corrupt.zip").write_bytes((d / "a.zip").read_bytes()[:3000])
    (d / "notes.txt").write_text("not a study")
    return d


@pytest.fixture
def log_sink() -> StringIO:
    buf = StringIO()
    setup_logging("DEBUG", sink=buf)
    return buf


def _by_name(rows: list[dict[str, Any]], corpus: Path) -> dict[str, dict[str, Any]]:
    return {Path(r["path"]).relative_to(corpus).as_posix(): r for r in rows}


def _check_rows(rows: list[dict[str, Any]], corpus: Path) -> None:
    by = _by_name(rows, corpus)
    assert set(by) == set(EXPECTED)
    for name, (status, code) in EXPECTED.items():
        r = by[name]
        assert r["status"] == status, (name, r)
        assert (r["error_code"] or None) == code, (name, r)
        assert len(str(r["study_key"])) == 16
        if status == "ok":
            p = float(r["probability"])
            assert 0.0 <= p <= 1.0
            assert r["label"] == ("pathology" if p >= 0.5 else "normal")
            assert r["label_balanced"] == r["label"]
            assert r["label_high_sensitivity"] == "pathology"
            assert r["selected_series_uid"]
            assert float(r["total_s"]) >= float(r["inference_s"]) > 0
        else:
            assert r["probability"] in (None, "")
            assert r["error_detail"]
        assert r["model_name"] == "tiny" and str(r["model_version"]) == "0.0.1"


def _assert_no_identifiers(text: str) -> None:
    for token in IDENTIFIERS:
        assert token.lower() not in text.lower(), f"identifier leaked: {token}"


def test_csv_batch_statuses_resume_and_no_identifiers(
    corpus: Path, manifest: Path, tmp_path: Path, log_sink: StringIO, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.csv"
    s = run_batch([corpus], out, manifest=manifest, device="cpu")
    assert (s.total, s.ok, s.errors, s.skipped) == (6, 4, 2, 0)
    assert s.error_codes == {"zip_invalid": 1, "not_ct": 1}
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    _check_rows(rows, corpus)
    first = out.read_bytes()

    # resume: nothing left to do → the model is not even loaded, the file is untouched
    s2 = run_batch([corpus], out, manifest=manifest, device="cpu")
    assert (s2.skipped, s2.ok, s2.errors, s2.model_loaded) == (6, 0, 0, False)
    assert out.read_bytes() == first

    # studies are keyed by content: a renamed copy is skipped, a new study is added
    extra = tmp_path / "more"
    extra.mkdir()
    shutil.copy(corpus / "a.zip", extra / "renamed.zip")
    make_study(extra / "new.zip", seed=6)
    s3 = run_batch([corpus, extra], out, manifest=manifest, device="cpu")
    assert (s3.total, s3.skipped, s3.ok) == (8, 7, 1)
    _, rows3, _ = read_report(out)
    assert len(rows3) == 7 and rows3[:6] == rows  # earlier rows kept verbatim

    # a retry of error rows re-runs exactly those
    s4 = run_batch([corpus], out, manifest=manifest, device="cpu", retry_errors=True)
    assert (s4.skipped, s4.errors, s4.ok) == (4, 2, 0)

    # logs and stderr (progress bar) never show identifiers nor the file names
    captured = capfd.readouterr()
    logs = log_sink.getvalue()
    assert "study" in logs
    _assert_no_identifiers(logs + captured.err + captured.out + out.read_text())
    for name in ("phi.zip", "corrupt.zip", "mr.zip", str(corpus)):
        assert name not in logs + captured.err


def test_json_with_explain_and_other_model_refused(corpus: Path, manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    s = run_batch([corpus / "a.zip", corpus / "mr.zip"], out, manifest=manifest, explain=True, progress=False)
    assert (s.ok, s.errors) == (1, 1)
    doc = json.loads(out.read_text())
    assert doc["model"]["name"] == "tiny" and doc["model"]["notice"] == "NOT FOR CLINICAL USE"
    assert doc["model"]["operating_points"]["balanced"]["sensitivity_ci95"] == [0.8, 0.95]
    ok = next(r for r in doc["studies"] if r["status"] == "ok")
    assert all(isinstance(ok[f"saliency_peak_{a}_mm"], float) for a in "xyz")
    assert ok["saliency_peak_value"] >= 0 and ok["explain_s"] > 0
    assert list(ok) == doc["columns"]
    # the peak lies inside the patient's body (the model input's, as the worker masks its maps)
    pr = Predictor.from_manifest(manifest, device="cpu")
    res = read_study(corpus / "a.zip", preprocess=pr.preprocess_config).preprocessed
    assert res is not None
    body = body_mask(pr, res.tensor)
    peak_lps = [ok[f"saliency_peak_{a}_mm"] for a in "xyz"]
    z, y, x = (round(float(v)) for v in res.geometry.lps_to_model([peak_lps])[0])
    assert 0.05 < float(body.float().mean()) < 0.95 and bool(body[z, y, x])
    # resuming the report without --explain (other columns) is refused
    with pytest.raises(ReportError, match="columns"):
        run_batch([corpus], out, manifest=manifest, progress=False)


def test_xlsx_formatting(corpus: Path, manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.xlsx"
    run_batch([corpus], out, manifest=manifest, device="cpu", progress=False)
    _, rows, _ = read_report(out)
    _check_rows(rows, corpus)
    wb = load_workbook(out)
    ws = wb["studies"]
    assert ws.freeze_panes == "A2"
    assert all(c.font.bold for c in ws[1])
    col = {c.value: c.column_letter for c in ws[1]}
    assert ws.column_dimensions[col["path"]].width >= 30
    red = "FFC7CE"
    for r in range(2, ws.max_row + 1):
        status = ws[f"{col['status']}{r}"].value
        prob = ws[f"{col['probability']}{r}"]
        if status == "error":
            assert ws[f"A{r}"].fill.start_color.rgb.endswith(red)
        else:
            assert prob.number_format == "0.0%" and isinstance(prob.value, float)
            assert ws[f"{col['label_high_sensitivity']}{r}"].fill.start_color.rgb.endswith(red)
    ms = wb["model"]
    values = [c.value for row in ms.iter_rows() for c in row if c.value is not None]
    assert values[0] == "NOT FOR CLINICAL USE"
    assert "tiny" in values and "balanced" in values and "high_sensitivity" in values


# --------------------------------------------------------------------------- indeterminate studies

AMBER = "FFEB9C"  # the XLSX fill of an indeterminate label


@pytest.fixture(scope="module")
def head_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study that is not a chest CT (a head: no lungs), on a small grid."""
    zp = tmp_path_factory.mktemp("head") / "head.zip"
    case = make_family("head", 1, rows=64, cols=64, pixel_spacing_mm=6.0, slice_spacing_mm=5.0)
    write_family_study(zp, case)
    return zp


@pytest.fixture(scope="module")
def ood_manifests(manifest: Path) -> dict[str, Path]:
    """The tiny model with OOD statistics (energy, fitted on noise): thresholds flagging nothing / all."""
    predictor = Predictor.from_manifest(manifest, device="cpu")
    torch.manual_seed(1)
    logits, feats = predictor.logits_and_features(torch.rand(12, 1, SIZE, SIZE, SIZE) * 2 - 1)
    fitted = fit_ood(feats.double().numpy(), logits.double().numpy(), method="energy", fitted_on="noise")
    entry = Manifest.load(manifest).get("tiny")
    out = {}
    for name, threshold in (("lenient", 1e6), ("strict", -1e6)):
        stats = dataclasses.replace(fitted, threshold=threshold)
        sha = stats.save(manifest.parent / f"tiny.{name}.ood.npz")
        ref = OODRef(
            method=stats.method,
            uri=f"tiny.{name}.ood.npz",
            sha256=sha,
            threshold=stats.threshold,
            fitted_on=stats.fitted_on,
            n=stats.n,
            in_distribution_rate=stats.in_distribution_rate,
        )
        path = manifest.parent / f"manifest-{name}.json"
        Manifest(entries={"tiny": dataclasses.replace(entry, ood=ref)}, default="tiny").save(path)
        out[name] = path
    return out


def _flag(v: Any) -> bool | None:
    """``ood_flagged`` read back: a bool (JSON, XLSX), "True"/"False" (CSV), empty without OOD statistics."""
    if v in (None, ""):
        return None
    return v is True or v == "True"


def _trust(row: dict[str, Any]) -> tuple[str, list[str], float | None, bool | None]:
    """(label, indeterminate_reasons, ood_score, ood_flagged) of a report row."""
    reasons = [r for r in str(row["indeterminate_reasons"] or "").split(",") if r]
    score = None if row["ood_score"] in (None, "") else float(row["ood_score"])
    return str(row["label"]), reasons, score, _flag(row["ood_flagged"])


@pytest.mark.parametrize("fmt", [".csv", ".json", ".xlsx"])
def test_a_non_chest_study_is_indeterminate_in_every_format(
    corpus: Path, head_zip: Path, ood_manifests: dict[str, Path], tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / f"report{fmt}"
    s = run_batch(
        [corpus / "a.zip", head_zip], out, manifest=ood_manifests["lenient"], device="cpu", progress=False
    )
    assert (s.ok, s.errors) == (2, 0)  # an indeterminate study is a processed study, not an error
    columns, rows, _ = read_report(out)
    assert {"label", "ood_score", "ood_flagged", "indeterminate_reasons"} <= set(columns)
    ops = [c for c in columns if c.startswith("label_")]
    assert ops == ["label_balanced", "label_high_sensitivity"]
    chest, head = (next(r for r in rows if Path(r["path"]).name == n) for n in ("a.zip", "head.zip"))

    label, reasons, score, flagged = _trust(head)
    assert label == "indeterminate" and reasons == ["no_lungs_found"], head
    assert all(head[c] == "indeterminate" for c in ops), head
    assert 0.0 <= float(head["probability"]) <= 1.0  # still reported
    assert score is not None and math.isfinite(score) and flagged is False

    label, reasons, score, flagged = _trust(chest)
    assert label in ("normal", "pathology") and reasons == [], chest
    assert chest["label_balanced"] == label and chest["label_high_sensitivity"] == "pathology"
    assert score is not None and math.isfinite(score) and flagged is False

    if fmt == ".json":
        doc = json.loads(out.read_text())
        raw = next(r for r in doc["studies"] if Path(r["path"]).name == "head.zip")
        assert raw["ood_flagged"] is False and isinstance(raw["ood_score"], float)
        assert raw["indeterminate_reasons"] == "no_lungs_found" and raw["label_balanced"] == "indeterminate"
    if fmt == ".xlsx":
        ws = load_workbook(out)["studies"]
        col = {c.value: c.column_letter for c in ws[1]}
        row_of = {Path(str(ws[f"{col['path']}{r}"].value)).name: r for r in range(2, ws.max_row + 1)}
        for c in ("label", *ops):  # every label cell of the indeterminate study is amber, not red
            cell = ws[f"{col[c]}{row_of['head.zip']}"]
            assert cell.value == "indeterminate" and cell.fill.start_color.rgb.endswith(AMBER), c
            assert cell.font.color.rgb.endswith("9C5700"), c
        chest_label = ws[f"{col['label']}{row_of['a.zip']}"]
        assert not str(chest_label.fill.start_color.rgb).endswith(AMBER)


@pytest.mark.parametrize("which", ["strict", "none"])
def test_ood_columns_follow_the_models_statistics(
    corpus: Path, manifest: Path, head_zip: Path, ood_manifests: dict[str, Path], tmp_path: Path, which: str
) -> None:
    model = ood_manifests.get(which, manifest)  # "none": the tiny model without OOD statistics
    out = tmp_path / "report.csv"
    run_batch([corpus / "a.zip", head_zip], out, manifest=model, device="cpu", progress=False)
    _, rows, _ = read_report(out)
    chest, head = (next(r for r in rows if Path(r["path"]).name == n) for n in ("a.zip", "head.zip"))
    if which == "strict":  # every study flagged: the OOD reason comes first
        assert _trust(chest)[:2] == ("indeterminate", ["out_of_distribution"]), chest
        assert _trust(head)[:2] == ("indeterminate", ["out_of_distribution", "no_lungs_found"]), head
        assert _trust(chest)[3] is _trust(head)[3] is True
        assert chest["label_balanced"] == chest["label_high_sensitivity"] == "indeterminate"
    else:  # no statistics: empty OOD columns, the pixel check alone
        assert _trust(chest) == (chest["label"], [], None, None) and chest["label"] != "indeterminate"
        assert _trust(head) == ("indeterminate", ["no_lungs_found"], None, None)


class _FlakyPredictor(Predictor):
    """Raises an unexpected error (quoting an identifier) on its second study."""

    calls = 0

    def predict(self, batch: torch.Tensor, voxel_mm: Any = None) -> Any:
        type(self).calls += 1
        if type(self).calls == 2:
            raise RuntimeError(f"boom in {PHI_IDENTIFIERS.patient_id}_0001.dcm")
        return super().predict(batch, voxel_mm)


def test_unexpected_error_is_a_row_and_the_batch_goes_on(
    corpus: Path, manifest: Path, tmp_path: Path, log_sink: StringIO
) -> None:
    entry = Manifest.load(manifest).get(None)
    torch.manual_seed(0)
    built = 0

    def factory() -> Predictor:
        nonlocal built
        built += 1
        return _FlakyPredictor(entry, build_model(entry.spec), device="cpu")

    out = tmp_path / "r.csv"
    paths = [corpus / "a.zip", corpus / "b.zip", corpus / "phi.zip"]
    s = run_batch(paths, out, manifest=manifest, progress=False, predictor_factory=factory)
    assert built == 1
    assert (s.ok, s.errors, s.error_codes) == (2, 1, {"internal_error": 1})
    _, rows, _ = read_report(out)
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert rows[1]["error_code"] == "internal_error" and "RuntimeError" in rows[1]["error_detail"]
    _assert_no_identifiers(log_sink.getvalue() + out.read_text())


def test_command_via_typer(corpus: Path, manifest: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command("predict")(predict_command)
    app.command("noop")(lambda: None)  # keep 'predict' a subcommand
    runner = CliRunner()
    out = tmp_path / "r.csv"
    args = ["predict", str(corpus / "mr.zip"), "--out", str(out), "--manifest", str(manifest)]
    r = runner.invoke(app, [*args, "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "0 ok, 1 error (not_ct=1)" in r.output
    r = runner.invoke(app, [*args[:3], str(tmp_path / "r.txt"), *args[4:]])
    assert r.exit_code == 2 and ".xlsx" in r.output
    r = runner.invoke(
        app, [*args[:2], "--out", str(tmp_path / "x.csv"), "--manifest", str(tmp_path / "no.json")]
    )
    assert r.exit_code == 2 and "model_unavailable" in r.output
    r = runner.invoke(app, [*args, "--model", "nope", "--no-progress"])
    assert r.exit_code == 2 and "unknown model" in r.output


def test_missing_manifest_is_model_unavailable(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable):
        run_batch([corpus / "a.zip"], tmp_path / "r.csv", manifest=tmp_path / "none.json", progress=False)


def test_importing_app_predict_does_not_load_torch() -> None:
    code = "import sys, app.predict; print(any(m == 'torch' or m.startswith('torch.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
