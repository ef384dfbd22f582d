"""The training recipe: focal loss, a tiny run that learns, k-fold, and the published artefacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from ml.data import CTDataset, TensorCache, class_weighted_sampler, read_labels_csv, split_train_val
from ml.phantom import write_corpus
from ml.preprocess import PreprocessConfig
from ml.train import FocalLoss, LitClassifier, TrainConfig, evaluate_model, retune, train

SMALL = PreprocessConfig(target_size=(32, 32, 32))


def test_focal_loss_reduces_to_cross_entropy_and_downweights_easy() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.2, 0.1], [-3.0, 3.0]])
    y = torch.tensor([0, 1, 1])
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert FocalLoss(alpha=0.5, gamma=0.0)(logits, y).item() == pytest.approx(0.5 * ce.item(), rel=1e-6)
    easy = FocalLoss(0.5, 2.0)(logits[2:], y[2:]).item()
    assert easy < 1e-3 * torch.nn.functional.cross_entropy(logits[2:], y[2:]).item() + 1e-6
    with pytest.raises(ValueError):
        FocalLoss(alpha=1.5)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    return write_corpus(
        root, 12, seed=5, rows=48, cols=48, pixel_spacing_mm=8.0, slice_spacing_mm=5.0, difficulty=(0.9, 1.0)
    )


def test_weighted_sampler_balances_classes() -> None:
    s = class_weighted_sampler([0] * 90 + [1] * 10, seed=1, num_samples=4000)
    drawn = torch.tensor([0] * 90 + [1] * 10)[list(s)]
    assert 0.45 < drawn.float().mean().item() < 0.55


def test_cache_is_keyed_by_config_and_reused(corpus: Path, tmp_path: Path) -> None:
    recs = read_labels_csv(corpus)[:2]
    cache = TensorCache(tmp_path, SMALL)
    assert cache.fill(recs, workers=1) == {}
    p = cache.path_for(recs[0])
    assert p.is_file() and cache.get(recs[0]).shape == (1, 32, 32, 32)
    other = TensorCache(tmp_path, PreprocessConfig(target_size=(24, 24, 24)))
    assert other.path_for(recs[0]) != p


def test_tiny_training_improves_loss(corpus: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    recs = read_labels_csv(corpus)
    cache = TensorCache(tmp_path, SMALL)
    cache.fill(recs, workers=1)
    ds = CTDataset(recs[:8], cache)
    x = torch.stack([ds[i][0] for i in range(8)])
    y = torch.tensor([ds[i][1] for i in range(8)])
    lit = LitClassifier({"arch": "resnet10"}, freeze=("stem",), lr=3e-3)
    opt = lit.configure_optimizers()["optimizer"]
    lit.train()
    losses = []
    for _ in range(12):
        loss = lit.loss_fn(lit(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.6 * losses[0], losses
    # frozen stem did not move
    assert all(not p.requires_grad for p in lit.model.conv1.parameters())


def test_a_fit_logs_its_progress_for_log_files(
    corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One line per ``log_every_n_steps`` steps and one per validation, with the val metrics."""
    import logging
    import re

    from ml.train import fit_once

    recs = read_labels_csv(corpus)
    cache = TensorCache(tmp_path / "cache", SMALL)
    cache.fill(recs, workers=1)
    tr, va = split_train_val(recs, 0.34, 0)
    cfg = TrainConfig(
        labels_csv=str(corpus), preprocess=SMALL, batch_size=2, max_epochs=2, log_every_n_steps=3
    )
    with caplog.at_level(logging.INFO, logger="ml.train"):
        _, info = fit_once(cfg, tr, va, cache, tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records if r.name == "ml.train"]
    step_line = re.compile(r"epoch (\d) step (\d+): train_loss \d")
    steps = [m.groups() for line in lines if (m := step_line.match(line))]
    assert info["global_step"] == 8 and steps == [("1", "3"), ("2", "6")]  # 4 steps per epoch
    done = [line for line in lines if " done (step " in line]
    assert [line.split(" done")[0] for line in done] == ["epoch 1/2", "epoch 2/2"]
    for line in done:
        assert re.search(r"train_loss \d\.\d{4}, val_auc \d\.\d{4}, val_f1 \d\.\d{4}, val_focal", line), line
        assert re.search(r"; lr \d\.\d\de-\d\d; best val_f1 \d\.\d{4}$", line), line
    with pytest.raises(ValueError, match="log_every_n_steps"):
        TrainConfig(log_every_n_steps=-1)


def _publishing_config(corpus: Path, tmp_path: Path, **overrides: Any) -> TrainConfig:
    """A tiny 32³ run on ``corpus`` that publishes ``tiny.pt`` into a copy of the repo's manifest."""
    manifest = tmp_path / "weights" / "manifest.json"
    manifest.parent.mkdir()
    src = Path(__file__).resolve().parents[3] / "weights" / "manifest.json"
    manifest.write_text(src.read_text())
    base: dict[str, Any] = {
        "labels_csv": str(corpus),
        "cache_dir": str(tmp_path / "cache"),
        "output_dir": str(tmp_path / "run"),
        "preprocess": SMALL,
        "batch_size": 2,
        "val_fraction": 0.34,
        "preprocess_workers": 1,
        "weights_path": str(manifest.parent / "tiny.pt"),
        "manifest_path": str(manifest),
    }
    return TrainConfig(**{**base, **overrides})


def test_end_to_end_train_publishes_weights_manifest_and_card(corpus: Path, tmp_path: Path) -> None:
    from ml.model import Manifest, resolve_weights
    from ml.model.checkpoint import load_model

    cfg = _publishing_config(
        corpus,
        tmp_path,
        max_epochs=2,
        k_folds=2,
        n_bootstrap=50,
        name="tiny-test",
        reproduce_command="pytest tests/unit/ml/test_train.py",
    )
    manifest = Path(str(cfg.manifest_path))
    summary = train(cfg)
    assert summary["cross_validation"]["k"] == 2 and len(summary["cross_validation"]["folds"]) == 2
    assert set(summary["operating_points"]) == {"balanced", "high_sensitivity", "high_specificity"}
    assert summary["calibration"]["temperature"] > 0
    m = Manifest.load(manifest)
    entry = m.get("tiny-test")
    assert entry.input_size == (32, 32, 32) and entry.sha256 and not entry.clinical_use
    assert entry.ood is None and "ood" not in summary  # a 4-study validation split fits no OOD statistics
    model = load_model(entry, resolve_weights(entry, manifest.parent), "cpu")
    assert model(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 2)
    card = (manifest.parent / "tiny.md").read_text()
    assert "NOT FOR CLINICAL USE" in card and "pytest tests/unit/ml/test_train.py" in card
    assert (manifest.parent / "tiny.roc.png").stat().st_size > 1000
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["fit"]["global_step"] > 0
    # `service4ct evaluate` on the same corpus with the published entry (cache reused)
    from cli import run_cli

    r = run_cli(
        "evaluate",
        str(corpus),
        "-o",
        str(tmp_path / "eval"),
        "--model",
        "tiny-test",
        "--manifest",
        str(manifest),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--n-bootstrap",
        "50",
    )
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["model"]["sha256"] == entry.sha256 and metrics["data"]["n"] == 12
    assert 0.0 <= metrics["summary"]["auc"] <= 1.0
    assert set(metrics["operating_points"]) == set(entry.operating_points)
    assert (tmp_path / "eval" / "roc.png").stat().st_size > 1000
    r = run_cli(
        "evaluate", str(corpus), "-o", str(tmp_path / "e2"), "--model", "nope", "--manifest", str(manifest)
    )
    assert r.returncode == 2 and "model_unavailable" in r.stderr


def _published_scorer(manifest: Path, name: str, tmp_path: Path) -> Any:
    """(labels, log-odds) of records under the published (fp16) weights of ``name``, loaded once."""
    from ml.model import Manifest, resolve_weights
    from ml.model.checkpoint import load_model
    from ml.train import labelled_logodds

    entry = Manifest.load(manifest).get(name)
    model = load_model(entry, resolve_weights(entry, manifest.parent), "cpu")
    cache = TensorCache(tmp_path / "cache", SMALL)
    return lambda recs: labelled_logodds(model, recs, cache)


def _published_tiny(corpus: Path, tmp_path: Path) -> tuple[TrainConfig, Path]:
    """A 1-epoch tiny model ``tiny-tune`` trained on ``corpus`` and published with card notes;
    its config and a separate 8-study tuning corpus."""
    tune_csv = write_corpus(
        tmp_path / "tune", 8, seed=6, rows=48, cols=48, pixel_spacing_mm=8.0, slice_spacing_mm=5.0
    )
    notes = tmp_path / "notes.md"
    notes.write_text("## How it was trained\n\nBy hand, on a Tuesday.\n")
    cfg = _publishing_config(
        corpus, tmp_path, max_epochs=1, n_bootstrap=20, name="tiny-tune", card_notes=str(notes)
    )
    train(cfg)
    return cfg, tune_csv


def test_calibrate_on_needs_a_known_split_and_a_tuning_corpus(corpus: Path) -> None:
    with pytest.raises(ValueError, match="calibrate_on must be one of"):
        TrainConfig(labels_csv=str(corpus), calibrate_on="test")
    with pytest.raises(ValueError, match="needs a tuning corpus"):
        TrainConfig(labels_csv=str(corpus), calibrate_on="tuning")
    assert TrainConfig(labels_csv=str(corpus), tune_labels_csv=str(corpus), calibrate_on="tuning")


def test_a_run_can_fit_its_temperature_on_the_tuning_corpus(corpus: Path, tmp_path: Path) -> None:
    """``calibrate_on: tuning`` in ``train``: T is the NLL fit on the tuning corpus, not on validation."""
    from ml.evaluate import fit_temperature
    from ml.model import Manifest

    tune_csv = write_corpus(
        tmp_path / "tune", 8, seed=6, rows=48, cols=48, pixel_spacing_mm=8.0, slice_spacing_mm=5.0
    )
    cfg = _publishing_config(
        corpus,
        tmp_path,
        max_epochs=1,
        n_bootstrap=20,
        name="tiny-cal",
        tune_labels_csv=str(tune_csv),
        calibrate_on="tuning",
    )
    summary = train(cfg)
    manifest = Path(str(cfg.manifest_path))
    entry = Manifest.load(manifest).get("tiny-cal")
    assert entry.calibration == summary["calibration"] and entry.calibration["fitted_on"] == "tuning corpus"
    score = _published_scorer(manifest, "tiny-cal", tmp_path)

    def fit(recs: list[Any]) -> float:
        y, z = score(recs)
        return fit_temperature(z, y)

    on_tuning = fit(read_labels_csv(tune_csv))
    on_val = fit(split_train_val(read_labels_csv(corpus), cfg.val_fraction, cfg.seed)[1])
    t = entry.calibration["temperature"]
    # the run fitted the float32 model; the published weights are float16
    assert t == pytest.approx(on_tuning, rel=2e-2) and abs(t - on_tuning) < abs(t - on_val)


def test_retune_refits_the_temperature_on_the_tuning_corpus(corpus: Path, tmp_path: Path) -> None:
    """``calibrate_on: tuning``: T minimises the NLL on the tuning corpus's log-odds of the
    published weights; the thresholds follow it; the validation split is re-scored with it."""
    import dataclasses

    from ml.data import StudyRecord
    from ml.evaluate import apply_temperature, fit_temperature, select_operating_points, summarize
    from ml.model import Manifest

    cfg, tune_csv = _published_tiny(corpus, tmp_path)
    manifest = Path(str(cfg.manifest_path))
    before = Manifest.load(manifest).get("tiny-tune")
    assert before.calibration["fitted_on"] == "validation"
    tuned = dataclasses.replace(
        cfg, tune_labels_csv=str(tune_csv), test_labels_csv=str(corpus), calibrate_on="tuning"
    )
    with pytest.raises(ValueError, match="repeat across the validation, tuning and test"):
        retune(tuned)  # the test corpus here is the training corpus, so it holds the validation split
    test_csv = write_corpus(
        tmp_path / "test", 6, seed=7, rows=48, cols=48, pixel_spacing_mm=8.0, slice_spacing_mm=5.0
    )
    summary = retune(dataclasses.replace(tuned, test_labels_csv=str(test_csv)))
    after = Manifest.load(manifest).get("tiny-tune")

    score = _published_scorer(manifest, "tiny-tune", tmp_path)

    def logodds(recs: list[StudyRecord]) -> Any:
        return score(recs)[1]

    tune = read_labels_csv(tune_csv)
    y = [r.label for r in tune]
    t = fit_temperature(logodds(tune), y)
    assert after.calibration == {"method": "temperature", "temperature": t, "fitted_on": "tuning corpus"}
    assert t != before.calibration["temperature"]
    expected = select_operating_points(
        y, apply_temperature(logodds(tune), t), cfg.sens_target, cfg.spec_target
    )
    for name, thr in expected.items():
        assert after.operating_points[name].threshold == pytest.approx(thr, rel=1e-9)
    val = split_train_val(read_labels_csv(corpus), cfg.val_fraction, cfg.seed)[1]
    assert after.metrics["data"]["val"] == before.metrics["data"]["val"] and len(val) == 4
    want = summarize([r.label for r in val], apply_temperature(logodds(val), t), n_boot=20, seed=cfg.seed)
    for k in ("n", "auc", "sensitivity", "specificity", "f1"):
        assert summary["validation"][k] == pytest.approx(want[k], nan_ok=True)
        assert after.metrics["validation"][k] == pytest.approx(want[k], nan_ok=True)
    card = (manifest.parent / "tiny.md").read_text()
    assert "| calibration fitted on | tuning corpus |" in card


def test_retune_rechooses_operating_points_on_a_tuning_corpus(corpus: Path, tmp_path: Path) -> None:
    """A published model's thresholds re-picked on a separate corpus; weights untouched."""
    import csv
    import dataclasses
    import hashlib

    from cli import run_cli

    from ml.evaluate import select_operating_points
    from ml.model import Manifest

    cfg, tune_csv = _published_tiny(corpus, tmp_path)
    manifest = Path(str(cfg.manifest_path))
    assert (
        (manifest.parent / "tiny.md")
        .read_text()
        .endswith("## How it was trained\n\nBy hand, on a Tuesday.\n")
    )
    weights = manifest.parent / "tiny.pt"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    before = Manifest.load(manifest).get("tiny-tune")
    assert before.metrics["operating_points_selected_on"] == "validation"

    tuned = dataclasses.replace(cfg, tune_labels_csv=str(tune_csv), test_labels_csv=str(corpus))
    summary = retune(tuned)
    after = Manifest.load(manifest).get("tiny-tune")
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest == after.sha256 == before.sha256
    assert summary["operating_points_selected_on"] == "tuning corpus"
    assert summary["operating_points_evaluated_on"] == "held-out test"
    assert after.metrics["validation"] == before.metrics["validation"]  # training-time metrics kept
    assert after.metrics["data"]["tune"]["n"] == 8 and after.metrics["data"]["test"]["n"] == 12
    assert after.calibration == before.calibration
    # the thresholds are select_operating_points on the tuning corpus's calibrated scores,
    # as evaluate_model (`service4ct evaluate`) scores it independently
    evaluate_model(
        manifest, tune_csv, tmp_path / "ev", name="tiny-tune", cache_dir=tmp_path / "cache", n_bootstrap=20
    )
    with (tmp_path / "ev" / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    expected = select_operating_points(
        [int(r["label"]) for r in rows],
        [float(r["probability"]) for r in rows],
        cfg.sens_target,
        cfg.spec_target,
    )
    for name, thr in expected.items():
        assert after.operating_points[name].threshold == pytest.approx(thr, rel=1e-5)
        assert summary["operating_points"][name]["n"] == 12
    # the OOD statistics are fitted on the tuning corpus and travel with the weights
    assert after.ood is not None and summary["ood"]["sha256"] == after.ood.sha256
    assert (after.ood.method, after.ood.fitted_on, after.ood.n) == ("mahalanobis", "tuning corpus", 8)
    assert after.ood.uri == "tiny.ood.npz" and (manifest.parent / "tiny.ood.npz").is_file()
    from ml.inference import Predictor

    p = Predictor.from_manifest(manifest, "tiny-tune", device="cpu")
    assert p.ood is not None and p.ood.threshold == after.ood.threshold
    card = (manifest.parent / "tiny.md").read_text()
    assert "| operating points selected on | tuning corpus |" in card and "tuning auc" in card
    assert "| out-of-distribution check | mahalanobis, threshold" in card
    assert card.index("## Reproduce") < card.index("By hand, on a Tuesday.")  # the notes survive a retune
    # a config that does not describe the published model is refused, by the CLI too
    with pytest.raises(ValueError, match="does not describe"):
        retune(dataclasses.replace(tuned, preprocess=PreprocessConfig(target_size=(40, 40, 40))))
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"labels_csv: {corpus}\ntune_labels_csv: {tune_csv}\nmanifest_path: {manifest}\n"
        f"weights_path: {weights}\nname: tiny-tune\ncache_dir: {tmp_path / 'cache'}\n"
    )
    r = run_cli("retune", str(bad))
    assert r.returncode == 2 and "does not describe" in r.stderr
    assert Manifest.load(manifest).get("tiny-tune") == after


def test_tuning_corpus_must_not_share_studies_with_training(corpus: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(labels_csv=str(corpus), tune_labels_csv=str(corpus), output_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="repeat across the train/tuning/test"):
        train(cfg)


def test_config_rejects_unknown_keys(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("labels_csv: x.csv\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_yaml(p)


def test_split_is_stratified(corpus: Path) -> None:
    tr, va = split_train_val(read_labels_csv(corpus), 0.34, seed=0)
    assert sum(r.label for r in va) == 2 and len(va) == 4 and len(tr) == 8


def test_config_takes_several_corpora_relative_to_its_folder(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("labels_csv: [a/labels.csv, b/labels.csv]\naugment_shift: 4\n")
    cfg = TrainConfig.from_yaml(p)
    assert cfg.labels_csvs() == [str(tmp_path / "a" / "labels.csv"), str(tmp_path / "b" / "labels.csv")]
    assert cfg.augment_shift == 4
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig(labels_csv="x.csv").labels_csvs() == ["x.csv"]


def test_repeated_study_ids_across_corpora_are_refused(corpus: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(labels_csv=(str(corpus), str(corpus)), output_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="repeat"):
        train(cfg)


def test_translate_moves_voxels_and_fills_with_air() -> None:
    from ml.data import translate

    t = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 4, 5, 6)
    out = translate(t, (1, -2, 3))
    assert out[0, 1, 0, 3] == t[0, 0, 2, 0] and out[0, 3, 2, 5] == t[0, 2, 4, 2]
    assert (out[0, 0] == -1).all() and (out[0, :, 3:] == -1).all() and (out[0, :, :, :3] == -1).all()
    assert torch.equal(translate(t, (0, 0, 0)), t)
    assert (translate(t, (0, 5, 0)) == -1).all()
    recs_shape = CTDataset([], TensorCache(Path("/nonexistent"), SMALL), augment=True, shift=2)
    assert recs_shape.shift == 2
    with pytest.raises(ValueError, match="shift"):
        CTDataset([], TensorCache(Path("/nonexistent"), SMALL), shift=-1)
