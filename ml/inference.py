"""Batched inference with a manifest model: calibrated probability and operating-point decisions.

A :class:`Predictor` owns one model, loaded once from the weights manifest
(:mod:`ml.model`) and kept in memory in eval mode with the
``channels_last_3d`` memory format. On CUDA the forward runs under bf16 autocast
with TF32 allowed; on CPU it runs in float32 and is deterministic (the same
input gives bit-identical output).

Calibration: the model has two logits (normal, pathology); the probability of
pathology is the temperature-scaled 2-class softmax, i.e.
``sigmoid((logit1 - logit0) / T)`` with ``T`` from the manifest's
``calibration`` block (``{"method": "temperature", "temperature": T}``; no block
or ``"method": "none"`` means ``T = 1``). A decision at an operating point is
``probability >= threshold``; the label is the decision at the manifest's
default operating point.

Knowing when it does not know: with OOD statistics (the manifest entry's ``ood``
block, :mod:`ml.ood`) every prediction also gets an out-of-distribution score
from the same forward pass (logits and pooled penultimate features), and, when
the caller gives each volume's model-voxel size, a chest-CT plausibility check
of the pixels. A flagged study's label is ``"indeterminate"`` with stable
``indeterminate_reasons`` (``out_of_distribution``, ``no_lungs_found`` …); its
probability is still reported.

Preprocessing belongs to the manifest too (architecture rule 5):
:attr:`Predictor.preprocess_config` is what the model was trained with.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ml.errors import ModelUnavailable
from ml.model.network import ResNet3D
from ml.ood.features import logits_and_features
from ml.ood.reasons import REASON_OUT_OF_DISTRIBUTION
from ml.ood.stats import OODStats
from ml.preprocess import PreprocessConfig, PreprocessResult, preprocess

if TYPE_CHECKING:
    from ml.geometry import CTVolume
    from ml.model import ModelEntry
    from ml.ood.plausibility import PlausibilityReport

__all__ = [
    "LABEL_INDETERMINATE",
    "LABEL_NORMAL",
    "LABEL_PATHOLOGY",
    "REASON_OUT_OF_DISTRIBUTION",
    "OODResult",
    "Prediction",
    "Predictor",
    "load_ood_stats",
    "resolve_device",
]

log = logging.getLogger(__name__)

LABEL_PATHOLOGY = "pathology"
LABEL_NORMAL = "normal"
LABEL_INDETERMINATE = "indeterminate"
_DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class OODResult:
    """The out-of-distribution check of one volume.

    Attributes:
        method: the score (see :data:`ml.ood.scores.OOD_METHODS`).
        score: the volume's score (higher = less like the data the statistics were fitted on).
        threshold: flagged above this.
        flagged: ``score > threshold``.
    """

    method: str
    score: float
    threshold: float
    flagged: bool


@dataclass(frozen=True)
class Prediction:
    """Result of one volume.

    Attributes:
        probability: calibrated probability of pathology, in [0, 1].
        logit: uncalibrated logit margin ``logit1 - logit0`` (before temperature scaling).
        label: ``"pathology"`` or ``"normal"`` at the default operating point, or
            ``"indeterminate"`` when ``indeterminate_reasons`` is not empty.
        decisions: operating point name → ``probability >= threshold`` (what the
            threshold alone says; an indeterminate study's decisions are all indeterminate).
        model_name, model_version, model_sha256: the model that produced it.
        ood: the out-of-distribution check, or None when the model has no OOD statistics.
        plausibility: the chest-CT plausibility measurements (:class:`ml.ood.plausibility.PlausibilityReport`
            as a dict), or None when not checked.
        indeterminate_reasons: stable codes of why no decision is given (empty = a decision).
    """

    probability: float
    logit: float
    label: str
    decisions: dict[str, bool] = field(default_factory=dict)
    model_name: str = ""
    model_version: str = ""
    model_sha256: str = ""
    ood: OODResult | None = None
    plausibility: dict[str, Any] | None = None
    indeterminate_reasons: tuple[str, ...] = ()

    @property
    def indeterminate(self) -> bool:
        """True when the model cannot judge this study."""
        return bool(self.indeterminate_reasons)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _temperature(calibration: Mapping[str, Any] | None) -> float:
    if not calibration:
        return 1.0
    method = str(calibration.get("method", "temperature"))
    if method == "none":
        return 1.0
    if method != "temperature":
        raise ModelUnavailable(f"unsupported calibration method {method!r}")
    t = float(calibration.get("temperature", 1.0))
    if not (t > 0 and math.isfinite(t)):
        raise ModelUnavailable(f"calibration temperature must be a positive number, got {t}")
    return t


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cpu"``/``"cuda"``/``"cuda:N"`` as given.

    This only names the device; :class:`Predictor` falls back to CPU when an
    ``"auto"`` choice of CUDA then fails to initialise.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.split(":")[0] not in _DEVICE_CHOICES[1:]:
        raise ValueError(f"device must be one of {_DEVICE_CHOICES} (or cuda:N), got {device!r}")
    return torch.device(device)


class Predictor:
    """One model in memory, ready for batched forward passes.

    Args:
        entry: the manifest entry of the model (input size, preprocessing,
            operating points, calibration, identity).
        model: the loaded network (any device; it is moved to ``device``).
        device: ``"auto"`` (CUDA if it works, else CPU with a warning),
            ``"cpu"``, ``"cuda"``/``"cuda:N"`` (fails with
            :class:`~ml.errors.ModelUnavailable` if CUDA does not work) or a
            ``torch.device``.
    """

    def __init__(
        self,
        entry: ModelEntry,
        model: ResNet3D,
        *,
        device: str | torch.device = "auto",
        ood: OODStats | None = None,
    ) -> None:
        self.entry = entry
        self.ood = ood
        self.temperature = _temperature(entry.calibration)
        # ModelEntry already guarantees operating points and a valid default one
        requested = device
        dev = resolve_device(device)
        model.eval()
        try:
            model = model.to(device=dev, dtype=torch.float32, memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        except (RuntimeError, AssertionError) as e:  # CUDA not compiled in, no driver, OOM, ...
            if dev.type == "cpu" or requested != "auto":
                raise ModelUnavailable(f"cannot place the model on {dev}: {type(e).__name__}: {e}") from e
            log.warning("CUDA initialisation failed (%s); falling back to CPU", type(e).__name__)
            dev = torch.device("cpu")
            model = model.to(device=dev, dtype=torch.float32, memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest kernels once
        self.model: ResNet3D = model
        self.device = dev

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_manifest(
        cls,
        manifest_path: str | Path,
        name: str | None = None,
        *,
        device: str | torch.device = "auto",
        fetch: Callable[..., Any] | None = None,
        allow_unverified: bool = False,
    ) -> Predictor:
        """Load model ``name`` (default: the manifest's default) once; weights checked by sha256.

        Raises :class:`~ml.errors.ModelUnavailable` for an unreadable manifest, an
        unknown name, a missing or mismatching weights file, or a device that
        cannot be used.
        """
        from ml.model import Manifest, resolve_weights
        from ml.model.checkpoint import load_model

        manifest_path = Path(manifest_path)
        try:
            manifest = Manifest.load(manifest_path)
        except (OSError, ValueError) as e:
            raise ModelUnavailable(f"cannot read the weights manifest: {e}") from e
        entry = manifest.get(name)
        weights = resolve_weights(entry, manifest_path.parent, fetch=fetch, allow_unverified=allow_unverified)
        model = load_model(entry, weights, torch.device("cpu"))
        return cls(entry, model, device=device, ood=load_ood_stats(entry, manifest_path.parent, fetch))

    # ------------------------------------------------------------------ properties
    @property
    def preprocess_config(self) -> PreprocessConfig:
        """The preprocessing the model was trained with (from the manifest)."""
        cfg: PreprocessConfig = self.entry.preprocess
        return cfg

    @property
    def input_size(self) -> tuple[int, int, int]:
        """Model input size (D, H, W)."""
        d, h, w = self.entry.input_size
        return (int(d), int(h), int(w))

    @property
    def uses_amp(self) -> bool:
        """True when the forward runs under bf16 autocast (CUDA)."""
        return self.device.type == "cuda"

    # ------------------------------------------------------------------ inference
    def check_batch(self, batch: torch.Tensor) -> None:
        """Raise ValueError unless ``batch`` is [B, 1, D, H, W] with (D, H, W) = the model input size."""
        want = (1, *self.input_size)
        if batch.ndim != 5 or tuple(batch.shape[1:]) != want or batch.shape[0] < 1:
            raise ValueError(
                f"expected a batch of shape [B, {', '.join(map(str, want))}], got {list(batch.shape)}"
            )

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw logits [B, num_classes] (float32, on CPU) for ``batch`` [B, 1, D, H, W]."""
        return self.logits_and_features(batch)[0]

    def logits_and_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, num_classes], pooled penultimate features [B, C]), float32 on CPU, one forward."""
        self.check_batch(batch)
        with torch.inference_mode():
            x = batch.to(self.device, dtype=torch.float32, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last_3d)
            if self.uses_amp:
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                    logits, feats = logits_and_features(self.model, x)
            else:
                logits, feats = logits_and_features(self.model, x)
            return logits.float().cpu(), feats.float().cpu()

    def margins(self, logits: torch.Tensor) -> torch.Tensor:
        """Logit margin of pathology (``logit1 - logit0``; the single logit of a 1-class head)."""
        if logits.shape[1] == 1:
            return logits[:, 0]
        return logits[:, 1] - logits[:, 0]

    def calibrate(self, margin: float) -> float:
        """Probability of pathology for a raw logit margin (temperature-scaled sigmoid)."""
        return float(torch.sigmoid(torch.tensor(margin / self.temperature, dtype=torch.float64)))

    def decide(self, probability: float) -> tuple[str, dict[str, bool]]:
        """(label at the default operating point, decision per operating point)."""
        decisions = {
            name: bool(probability >= float(op.threshold)) for name, op in self.entry.operating_points.items()
        }
        label = LABEL_PATHOLOGY if decisions[self.entry.default_operating_point] else LABEL_NORMAL
        return label, decisions

    def predict(
        self,
        batch: torch.Tensor,
        voxel_mm: Sequence[tuple[float, float, float]] | None = None,
        *,
        forward: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> list[Prediction]:
        """Predictions for ``batch`` [B, 1, D, H, W] (one per volume, in order).

        Args:
            batch: preprocessed volumes.
            voxel_mm: per volume, the size (z, y, x) in mm of one model voxel
                (:meth:`ml.preprocess.PreprocessGeometry.model_voxel_mm`); when given, each
                volume is also checked for chest-CT plausibility. Without it only the OOD
                score (if the model has OOD statistics) can make a prediction indeterminate.
            forward: (logits, pooled features) of ``batch`` computed already (e.g. by
                :func:`ml.explain.fused.forward_with_gradcam`): no second forward pass.
        """
        if voxel_mm is not None and len(voxel_mm) != batch.shape[0]:
            raise ValueError(f"voxel_mm has {len(voxel_mm)} entries for a batch of {batch.shape[0]}")
        logits, feats = forward if forward is not None else self.logits_and_features(batch)
        margins = self.margins(logits.double()).tolist()
        oods = self._ood(feats, logits)
        out: list[Prediction] = []
        for i, m in enumerate(margins):
            p = self.calibrate(m)
            label, decisions = self.decide(p)
            reasons: list[str] = []
            plaus = None
            if voxel_mm is not None:
                report = self._plausibility(batch[i], voxel_mm[i])
                plaus = report.to_dict()
                reasons.extend(report.reasons)
            ood = oods[i]
            if ood is not None and ood.flagged:
                reasons.insert(0, REASON_OUT_OF_DISTRIBUTION)
            out.append(
                Prediction(
                    probability=p,
                    logit=float(m),
                    label=LABEL_INDETERMINATE if reasons else label,
                    decisions=decisions,
                    model_name=self.entry.name,
                    model_version=self.entry.version,
                    model_sha256=self.entry.sha256 or "",
                    ood=ood,
                    plausibility=plaus,
                    indeterminate_reasons=tuple(reasons),
                )
            )
        return out

    def _ood(self, feats: torch.Tensor, logits: torch.Tensor) -> list[OODResult | None]:
        if self.ood is None:
            return [None] * int(logits.shape[0])
        scores = self.ood.scores(feats.double().numpy(), logits.double().numpy())
        return [
            OODResult(
                method=self.ood.method,
                score=float(s),
                threshold=float(self.ood.threshold),
                flagged=bool(s > self.ood.threshold),
            )
            for s in scores
        ]

    def _plausibility(self, volume: torch.Tensor, voxel_mm: tuple[float, float, float]) -> PlausibilityReport:
        from ml.ood.plausibility import check_plausibility

        lo, hi = self.preprocess_config.hu_window
        return check_plausibility(volume.float().cpu().numpy(), voxel_mm, (float(lo), float(hi)))

    def predict_volume(self, volume: CTVolume) -> tuple[Prediction, PreprocessResult]:
        """Preprocess ``volume`` with the manifest's settings and predict it (with the plausibility check)."""
        result = preprocess(volume, self.preprocess_config)
        return self.predict(result.tensor, [result.geometry.model_voxel_mm()])[0], result


def load_ood_stats(
    entry: ModelEntry, manifest_dir: Path, fetch: Callable[..., Any] | None = None
) -> OODStats | None:
    """The entry's OOD statistics (file checked by sha256 and against the manifest), or None."""
    from ml.model.weights import resolve_ood_stats

    path = resolve_ood_stats(entry, manifest_dir, fetch)
    if path is None or entry.ood is None:
        return None
    try:
        stats = OODStats.load(path)
    except (OSError, ValueError) as e:
        raise ModelUnavailable(f"model {entry.name!r}: unreadable OOD statistics: {e}") from e
    if stats.method != entry.ood.method or not math.isclose(
        stats.threshold, entry.ood.threshold, rel_tol=1e-9
    ):
        raise ModelUnavailable(
            f"model {entry.name!r}: the OOD statistics file "
            f"({stats.method}, threshold {stats.threshold:.6g}) disagrees with the manifest "
            f"({entry.ood.method}, threshold {entry.ood.threshold:.6g})"
        )
    return stats
