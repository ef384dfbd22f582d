"""What a run publishes: fp16 weights, the manifest entry, ROC/calibration plots and the model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ml import evaluate as ev
from ml.train.config import TrainConfig


def write_card(cfg: TrainConfig, summary: dict[str, Any], card: Path, roc_name: str, cal_name: str) -> None:
    """Write the Markdown model card of a run from its summary (also usable on a saved summary.json)."""
    card_metrics: dict[str, Any] = {}
    for split in ("validation", "tuning", "test"):
        for k in ("auc", "sensitivity", "specificity", "f1"):
            if split in summary:
                label = f"{split} {k}{' at p>=0.5' if k != 'auc' else ''}"
                card_metrics[label] = summary[split][k]
                card_metrics[f"{label}_ci95"] = summary[split][f"{k}_ci95"]
    if "cross_validation" in summary:
        cv = summary["cross_validation"]
        card_metrics[f"{cv['k']}-fold out-of-fold auc"] = cv["oof_auc"]
        card_metrics[f"{cv['k']}-fold out-of-fold auc_ci95"] = cv["oof_auc_ci95"]
    d = summary["data"]
    card_metrics["studies (train / validation / tuning / test)"] = (
        f"{d['train']['n']} / {d['val']['n']} / {d.get('tune', {}).get('n', 0)} / {d['test']['n']}, "
        f"balanced; failed: {len(d['failed_studies'])}"
    )
    card_metrics["calibration temperature"] = summary["calibration"]["temperature"]
    card_metrics["calibration fitted on"] = summary["calibration"].get("fitted_on", "validation")
    card_metrics["operating points selected on"] = summary.get("operating_points_selected_on", "validation")
    card_metrics["operating points evaluated on"] = summary["operating_points_evaluated_on"]
    ood = summary.get("ood")
    if ood is None:
        card_metrics["out-of-distribution check"] = "none published: the service cannot say 'indeterminate'"
    else:
        card_metrics["out-of-distribution check"] = (
            f"{ood['method']}, threshold {ood['threshold']:.4g}, fitted on the {ood['fitted_on']} "
            f"(n = {ood['n']}); held-out in-distribution studies kept: {ood['in_distribution_rate']:.3f}"
        )
    ev.write_model_card(
        card,
        name=cfg.name,
        version=cfg.version,
        arch_text=f"3-D {cfg.model.arch} (MedicalNet layout, shortcut {cfg.model.shortcut_type}), "
        f"frozen stages: {', '.join(cfg.freeze) or 'none'}",
        input_size=cfg.preprocess.target_size,
        metrics=card_metrics,
        operating_points=summary["operating_points"],
        training_data=cfg.training_data,
        intended_use=cfg.intended_use,
        limitations=[
            "Trained and evaluated on synthetic phantoms only; says nothing about real patients.",
            "Phantom lesions are idealised shapes; real pathology is far more varied.",
            f"Input {cfg.preprocess.target_size} voxels, coarser than the production 256³.",
        ],
        reproduce_command=cfg.reproduce_command,
        roc_png=roc_name,
        calibration_png=cal_name,
        clinical_use=cfg.clinical_use,
        notes=Path(cfg.card_notes).read_text(encoding="utf-8") if cfg.card_notes else "",
    )


def publish(cfg: TrainConfig, model: nn.Module, summary: dict[str, Any]) -> dict[str, str]:
    """Write fp16 weights, then the manifest entry, plots and model card (:func:`publish_entry`)."""
    from ml.model.checkpoint import save_weights

    assert cfg.weights_path is not None
    wpath = Path(cfg.weights_path)
    wpath.parent.mkdir(parents=True, exist_ok=True)
    sha = save_weights(model, wpath, dtype="float16")
    return publish_entry(cfg, summary, sha)


def publish_entry(cfg: TrainConfig, summary: dict[str, Any], sha256: str) -> dict[str, str]:
    """Write the manifest entry, ROC/calibration plots and model card beside ``cfg.weights_path``.

    ``summary`` is a run's (or :func:`retune`'s) summary; ``sha256`` that of the weights
    file, which this does not touch.
    """
    import shutil

    from ml.model import Manifest, ModelEntry, OODRef, OperatingPoint

    assert cfg.weights_path is not None
    wpath = Path(cfg.weights_path)
    stem = wpath.name.split(".")[0]
    roc_dst = wpath.parent / f"{stem}.roc.png"
    cal_dst = wpath.parent / f"{stem}.calibration.png"
    card = wpath.parent / f"{stem}.md"
    shutil.copyfile(summary["artifacts"]["roc_png"], roc_dst)
    shutil.copyfile(summary["artifacts"]["calibration_png"], cal_dst)
    metrics: dict[str, Any] = {
        k: summary[k] for k in ("validation", "tuning", "test", "cross_validation") if k in summary
    }
    for k in ("operating_points_selected_on", "operating_points_evaluated_on", "data"):
        metrics[k] = summary[k]
    ood = summary.get("ood")
    ood_dst = wpath.parent / f"{stem}.ood.npz"
    if ood is not None:
        shutil.copyfile(ood["file"], ood_dst)
    write_card(cfg, summary, card, roc_dst.name, cal_dst.name)
    if cfg.manifest_path:
        mpath = Path(cfg.manifest_path)
        manifest = Manifest.load(mpath)

        def rel(p: Path) -> str:
            return str(p.resolve().relative_to(mpath.parent.resolve()))

        entry = ModelEntry(
            name=cfg.name,
            version=cfg.version,
            spec=cfg.model,
            input_size=cfg.preprocess.target_size,
            preprocess=cfg.preprocess,
            operating_points={
                n: OperatingPoint(
                    threshold=float(v["threshold"]),
                    sensitivity=float(v["sensitivity"]),
                    specificity=float(v["specificity"]),
                    sensitivity_ci95=(float(v["sensitivity_ci95"][0]), float(v["sensitivity_ci95"][1])),
                    specificity_ci95=(float(v["specificity_ci95"][0]), float(v["specificity_ci95"][1])),
                )
                for n, v in summary["operating_points"].items()
            },
            default_operating_point="balanced",
            calibration=dict(summary["calibration"]),
            metrics=json.loads(json.dumps(metrics, default=float)),
            training_data=cfg.training_data,
            intended_use=cfg.intended_use,
            clinical_use=cfg.clinical_use,
            sha256=sha256,
            uri=rel(wpath),
            stored_dtype="float16",
            model_card=rel(card),
            ood=None
            if ood is None
            else OODRef.from_dict(
                {**{k: v for k, v in ood.items() if k != "file"}, "uri": rel(ood_dst), "n": int(ood["n"])}
            ),
        )
        manifest.upsert(entry)
        if cfg.make_default:
            manifest.default = cfg.name
        manifest.save(mpath)
    return {"weights": str(wpath), "sha256": sha256, "model_card": str(card), "roc_png": str(roc_dst)}
