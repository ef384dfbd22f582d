"""What a training run is told: :class:`TrainConfig`, loaded and validated from YAML.

Paths in a YAML config are relative to the config file's folder; unknown keys are refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ml.data import PhantomCorpus
from ml.model import ModelSpec
from ml.ood.scores import OOD_METHODS
from ml.preprocess import PreprocessConfig

#: the metrics a run may select epochs on, and which way is better
MONITOR_MODES = {"val_f1": "max", "val_loss": "min"}
#: the splits a run can fit its calibration temperature on (``TrainConfig.calibrate_on``)
CALIBRATION_SPLITS = ("validation", "tuning")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs (paths relative to the config file's folder)."""

    #: one labels CSV, or several corpora (study ids must be unique across them)
    labels_csv: str | tuple[str, ...] = ()
    #: training/validation corpora of phantoms generated in memory (``PhantomCorpus``
    #: fields: seed, n, rows, cols, pixel_spacing_mm, slice_spacing_mm, difficulty), in
    #: addition to ``labels_csv``; they carry lesion maps for ``lesion_weight`` / ``ig_weight``
    phantom_corpora: tuple[PhantomCorpus, ...] = ()
    test_labels_csv: str | None = None
    #: a held-out corpus (neither trained on nor the test set) on which the operating points
    #: are chosen; None = the validation split (which also picks the best epoch)
    tune_labels_csv: str | None = None
    cache_dir: str = "var/cache"
    output_dir: str = "var/train/run"
    model: ModelSpec = field(default_factory=lambda: ModelSpec(arch="resnet10"))
    preprocess: PreprocessConfig = field(default_factory=lambda: PreprocessConfig(target_size=(96, 96, 96)))
    init_checkpoint: str | None = None
    freeze: tuple[str, ...] = ("stem", "layer1")
    focal_alpha: float = 0.5
    focal_gamma: float = 2.0
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 4
    max_epochs: int = 30
    max_steps: int = -1
    #: stop the fit after this many minutes of wall time (best checkpoint kept); None = no limit
    max_time_minutes: float | None = None
    early_stopping_patience: int = 6
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    val_fraction: float = 0.2
    k_folds: int = 1
    augment: bool = True
    #: largest random translation per axis in model voxels when ``augment`` (0 = none)
    augment_shift: int = 0
    #: weight of the lesion-attention loss (0 = off): on positive studies with a lesion map,
    #: −log of the share of the softmax over the pathology-evidence map (the class-activation
    #: map of the margin, i.e. what Grad-CAM shows at ``layer4``) that falls on lesion voxels
    lesion_weight: float = 0.0
    #: weight of the attribution prior on Integrated Gradients' path (0 = off): on positive
    #: studies with a lesion map, −log of the share of a temperature softmax over
    #: a one-point expected-gradients estimate of the IG map (black baseline) that falls
    #: within one voxel of a lesion (:func:`path_attribution_loss`), in training and
    #: validation batches (part of ``val_loss``)
    ig_weight: float = 0.0
    #: positives per batch that get the IG term (≈ 10 forward passes each)
    ig_studies: int = 2
    #: the softmax's temperature: the map's maximum becomes this logit
    ig_temperature: float = 10.0
    #: what picks the best epoch, drives early stopping and the learning-rate plateau:
    #: ``val_f1`` (maximised) or ``val_loss`` (minimised: the training objective on the
    #: validation studies, focal loss plus ``lesion_weight`` × the lesion-attention loss plus
    #: ``ig_weight`` × the IG term; use it when fine-tuning a model whose validation F1 is
    #: already saturated)
    monitor: str = "val_f1"
    seed: int = 0
    preprocess_workers: int = 2
    #: DataLoader worker processes for training batches (0 = in the training process)
    loader_workers: int = 0
    #: deterministic kernels (reproducible to the bit, slower 3-D convolutions on CUDA);
    #: False lets cuDNN pick the fastest algorithms (``benchmark``)
    deterministic: bool = True
    accelerator: str = "auto"
    #: "auto" = bf16-mixed on a CUDA device with bf16, else 32-true; or a Lightning precision
    #: such as "bf16-mixed" (also on CPUs with AVX-512 BF16) or "32-true"
    precision: str = "auto"
    #: where the calibration temperature is fitted: ``validation`` (the validation split,
    #: which also picks the best epoch) or ``tuning`` (``tune_labels_csv``, where the
    #: operating points are chosen). Use ``tuning`` when the validation studies are not
    #: held out from the weights, e.g. a fine-tune whose validation split was an earlier
    #: step's training data: the fit would then match how the model scores studies it has
    #: learnt, not new ones.
    #: :func:`retune` refits the temperature only with ``tuning``.
    calibrate_on: str = "validation"
    #: the ``high_sensitivity`` / ``high_specificity`` operating points meet these on the
    #: split they are chosen on (``balanced`` maximises Youden's J)
    sens_target: float = 0.98
    spec_target: float = 0.98
    n_bootstrap: int = 1000
    #: the out-of-distribution statistics published with the weights (:mod:`ml.ood`), fitted
    #: on the tuning corpus (else the validation split) with a threshold that keeps
    #: ``ood_keep`` of its held-out part; ``none`` publishes none
    ood_method: str = "mahalanobis"
    ood_keep: float = 0.95
    #: a progress line in the log (logger ``ml.train``, INFO) every this many training
    #: steps (0 = none), besides the one after each validation
    log_every_n_steps: int = 20
    # what the run publishes
    name: str = "resnet10-demo"
    version: str = "0.1.0"
    weights_path: str | None = None
    manifest_path: str | None = None
    make_default: bool = False
    training_data: str = "synthetic chest-CT phantoms generated by ml.phantom"
    intended_use: str = (
        "Demonstration of the Service4CT pipeline on synthetic phantoms. NOT FOR CLINICAL USE."
    )
    clinical_use: bool = False
    reproduce_command: str = ""
    #: a Markdown file appended to the model card each time the run (or ``retune``)
    #: writes it: how the model was trained, what it reached against its goals
    card_notes: str | None = None

    def __post_init__(self) -> None:
        if self.monitor not in MONITOR_MODES:
            raise ValueError(f"monitor must be one of {sorted(MONITOR_MODES)}, not {self.monitor!r}")
        if self.ig_weight < 0 or self.ig_studies < 1 or self.ig_temperature <= 0:
            raise ValueError("ig_weight must be >= 0, ig_studies >= 1 and ig_temperature > 0")
        if self.log_every_n_steps < 0:
            raise ValueError("log_every_n_steps must be >= 0")
        if self.ood_method not in (*OOD_METHODS, "none"):
            raise ValueError(f"ood_method must be one of {[*OOD_METHODS, 'none']}, not {self.ood_method!r}")
        if not 0.5 <= self.ood_keep < 1.0:
            raise ValueError("ood_keep must be in [0.5, 1)")
        if not (0.0 < self.sens_target <= 1.0 and 0.0 < self.spec_target <= 1.0):
            raise ValueError("sens_target and spec_target must be in (0, 1]")
        if self.calibrate_on not in CALIBRATION_SPLITS:
            raise ValueError(
                f"calibrate_on must be one of {list(CALIBRATION_SPLITS)}, not {self.calibrate_on!r}"
            )
        if self.calibrate_on == "tuning" and not self.tune_labels_csv:
            raise ValueError("calibrate_on: tuning needs a tuning corpus (tune_labels_csv)")

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        p = Path(path)
        raw = yaml.safe_load(p.read_text()) or {}
        return cls.from_dict(raw, base=p.parent)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base: Path | None = None) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown training config keys: {unknown}")
        d = dict(raw)
        if "model" in d:
            d["model"] = ModelSpec.from_dict(d["model"])
        if "preprocess" in d:
            d["preprocess"] = PreprocessConfig.from_dict(d["preprocess"])
        if "freeze" in d:
            d["freeze"] = tuple(d["freeze"] or ())
        if "phantom_corpora" in d:
            d["phantom_corpora"] = tuple(PhantomCorpus.from_dict(c) for c in d["phantom_corpora"] or ())

        def resolve(v: str) -> str:
            return str((base / v).resolve()) if base is not None and not Path(v).is_absolute() else v

        if isinstance(d.get("labels_csv"), list):
            d["labels_csv"] = tuple(resolve(str(v)) for v in d["labels_csv"])
        for k in (
            "labels_csv",
            "test_labels_csv",
            "tune_labels_csv",
            "cache_dir",
            "output_dir",
            "init_checkpoint",
            "weights_path",
            "manifest_path",
            "card_notes",
        ):
            if isinstance(d.get(k), str):
                d[k] = resolve(d[k])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        d["preprocess"] = self.preprocess.to_dict()
        d["freeze"] = list(self.freeze)
        d["phantom_corpora"] = [c.to_dict() for c in self.phantom_corpora]
        if isinstance(self.labels_csv, tuple):
            d["labels_csv"] = list(self.labels_csv)
        return d

    def labels_csvs(self) -> list[str]:
        """The training/validation corpora's labels CSVs."""
        return [self.labels_csv] if isinstance(self.labels_csv, str) else list(self.labels_csv)
