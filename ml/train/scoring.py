"""Scoring cached studies with a trained model, the calibration temperature, and the operating
points chosen on one split and measured on another (with ROC and calibration plots)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import DataLoader

from ml import evaluate as ev
from ml.data import CTDataset, StudyRecord, TensorCache
from ml.model.network import ResNet3D
from ml.ood.features import logits_and_features
from ml.train.config import TrainConfig
from ml.train.losses import logit_diff

#: what each scored split is called in summaries, model cards and ROC legends
SPLIT_TITLES = {"validation": "validation", "tuning": "tuning corpus", "test": "held-out test"}


def scoring_device(accelerator: str) -> torch.device:
    """Where a trained model scores studies: the CUDA device when training may use one.

    Scoring the validation/tuning/test studies on the CPU after a GPU fit took 4 min for
    336 studies at 128³ on one thread, longer than the fit itself.
    """
    cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if cuda else "cpu")


def predict_outputs(
    model: ResNet3D, ds: CTDataset, batch_size: int = 4
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(logits [N, K], pooled penultimate features [N, C]) of every item of ``ds``.

    Eval mode, no augmentation, one forward per batch (:func:`ml.ood.features.logits_and_features`).
    """
    dev = next(model.parameters()).device
    model.eval()
    logits: list[torch.Tensor] = []
    feats: list[torch.Tensor] = []
    plain = CTDataset(ds.records, ds.cache, augment=False)
    with torch.inference_mode():
        for x, _ in DataLoader(plain, batch_size=batch_size, shuffle=False):
            lg, ft = logits_and_features(model, x.to(dev))
            logits.append(lg.float().cpu())
            feats.append(ft.float().cpu())
    if not logits:
        return np.zeros((0, 2)), np.zeros((0, 0))
    return torch.cat(logits).double().numpy(), torch.cat(feats).double().numpy()


def logodds_of(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Log-odds of pathology of 2-class logits [N, 2] (empty for no rows)."""
    if logits.size == 0:
        return np.zeros(0)
    out: npt.NDArray[np.float64] = logit_diff(torch.from_numpy(logits)).double().numpy()
    return out


def predict_logodds(model: nn.Module, ds: CTDataset, batch_size: int = 4) -> npt.NDArray[np.float64]:
    """Log-odds of pathology for every item of ``ds`` (eval mode, no augmentation)."""
    return logodds_of(predict_outputs(model, ds, batch_size)[0])  # type: ignore[arg-type]


def labelled_logodds(
    model: nn.Module, records: Sequence[StudyRecord], cache: TensorCache
) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64]]:
    """(labels, uncalibrated log-odds of pathology) of cached studies."""
    return np.asarray([r.label for r in records]), predict_logodds(model, CTDataset(records, cache))


def score_records(
    model: nn.Module, records: Sequence[StudyRecord], cache: TensorCache, temperature: float
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """(labels, temperature-calibrated probabilities of pathology) of cached studies."""
    y, z = labelled_logodds(model, records, cache)
    return y, ev.apply_temperature(z, temperature)


#: per split, (logits [N, K], pooled penultimate features [N, C]) of its studies
SplitOutputs = dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]


def score_splits(
    model: nn.Module,
    splits: Mapping[str, Sequence[StudyRecord]],
    cache: TensorCache,
    temperature: float | None = None,
    fit_on: str = "validation",
) -> tuple[float, dict[str, tuple[npt.NDArray[Any], npt.NDArray[Any]]], SplitOutputs]:
    """Score each non-empty split (keys of :data:`SPLIT_TITLES`) of cached studies, one forward each.

    Returns the temperature, per split (labels, calibrated probabilities of pathology),
    and per split the raw outputs (logits, pooled features) that the OOD statistics are
    fitted on. ``temperature`` None: fitted (:func:`ml.evaluate.fit_temperature`) on the
    log-odds of the split ``fit_on``, which must hold studies.
    """
    outputs: SplitOutputs = {
        k: predict_outputs(model, CTDataset(recs, cache))  # type: ignore[arg-type]
        for k, recs in splits.items()
        if recs
    }
    raw = {k: (np.asarray([r.label for r in splits[k]]), logodds_of(lg)) for k, (lg, _) in outputs.items()}
    if temperature is None:
        if fit_on not in raw:
            raise ValueError(f"no {SPLIT_TITLES[fit_on]} studies to fit the calibration temperature on")
        temperature = ev.fit_temperature(raw[fit_on][1], raw[fit_on][0])
    t = float(temperature)
    return t, {k: (y, ev.apply_temperature(z, t)) for k, (y, z) in raw.items()}, outputs


def calibration_record(temperature: float, fitted_on: str) -> dict[str, Any]:
    """The manifest's ``calibration`` of a temperature fitted on the split ``fitted_on``."""
    return {"method": "temperature", "temperature": temperature, "fitted_on": SPLIT_TITLES[fitted_on]}


def choose_operating_points(
    cfg: TrainConfig,
    scored: dict[str, tuple[npt.NDArray[Any], npt.NDArray[Any]]],
    out_dir: Path,
) -> dict[str, Any]:
    """Pick the named thresholds on one split and measure them on another; plot ROC and calibration.

    ``scored`` maps ``"validation"`` / ``"tuning"`` / ``"test"`` to (labels, calibrated
    probabilities). The thresholds come from the tuning corpus when there is one, else
    from validation; they are evaluated on the test corpus when there is one, else on the
    split they were chosen on. Returns the summary keys ``<split>`` (AUC, rates at 0.5
    with CIs), ``operating_points``, ``operating_points_selected_on``,
    ``operating_points_evaluated_on`` and ``artifacts`` (``roc.png``, ``calibration.png``
    in ``out_dir``).
    """
    out: dict[str, Any] = {
        split: ev.summarize(y, p, n_boot=cfg.n_bootstrap, seed=cfg.seed) for split, (y, p) in scored.items()
    }
    sel = "tuning" if "tuning" in scored else "validation"
    evl = "test" if "test" in scored else sel
    thresholds = ev.select_operating_points(
        *scored[sel], sens_target=cfg.sens_target, spec_target=cfg.spec_target
    )
    ops = ev.evaluate_operating_points(*scored[evl], thresholds, n_boot=cfg.n_bootstrap, seed=cfg.seed)
    out["operating_points"] = ops
    out["operating_points_selected_on"] = SPLIT_TITLES[sel]
    out["operating_points_evaluated_on"] = SPLIT_TITLES[evl]
    out_dir.mkdir(parents=True, exist_ok=True)
    roc_png, cal_png = out_dir / "roc.png", out_dir / "calibration.png"
    op_marks = {n: (1.0 - v["specificity"], v["sensitivity"]) for n, v in ops.items()}
    curves = {SPLIT_TITLES[k]: v for k, v in scored.items()}
    ev.plot_roc(curves, roc_png, title=f"{cfg.name} ROC", operating_points=op_marks)
    ev.plot_calibration(*scored[evl], cal_png)
    out["artifacts"] = {"roc_png": str(roc_png), "calibration_png": str(cal_png)}
    return out
