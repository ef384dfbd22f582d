"""The weights manifest: what each servable model is, how to preprocess for it, where its file is.

Torch-free on purpose: the API process reads the manifest (model cards, model
names, operating points) without loading torch. Where a weight file lives is
resolved by :func:`ml.model.weights.resolve_weights`; the checkpoint loader is
:mod:`ml.model.checkpoint`.

JSON layout::

    {"schema_version": 1, "default": "<name>", "models": {"<name>": {<ModelEntry>}, ...}}

Weight locations (``ModelEntry.uri``) are a path relative to the manifest's
directory, an absolute local path, or ``s3://bucket/key``.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from ml.errors import ModelUnavailable
from ml.model.spec import ModelSpec
from ml.ood.scores import OOD_METHODS
from ml.preprocess import PreprocessConfig

__all__ = [
    "SCHEMA_VERSION",
    "Manifest",
    "ModelEntry",
    "OODRef",
    "OperatingPoint",
    "StoredDtype",
]

SCHEMA_VERSION = 1
StoredDtype = Literal["float16", "float32"]

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CALIBRATION_METHODS = ("none", "temperature")


# --------------------------------------------------------------------------- manifest


def _refuse_unknown(d: Mapping[str, Any], known: Iterable[str], what: str) -> None:
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} keys: {unknown}; allowed: {sorted(known)}")


def _require(d: Mapping[str, Any], keys: Iterable[str], what: str) -> None:
    missing = sorted(k for k in keys if k not in d)
    if missing:
        raise ValueError(f"{what} is missing required keys: {missing}")


def _fraction(x: Any, what: str) -> float:
    v = float(x)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"{what} must be in [0, 1], got {x!r}")
    return v


def _ci(x: Any, what: str) -> tuple[float, float] | None:
    if x is None:
        return None
    if len(x) != 2:
        raise ValueError(f"{what} must be [low, high] or null, got {x!r}")
    lo, hi = _fraction(x[0], what), _fraction(x[1], what)
    if lo > hi:
        raise ValueError(f"{what} must have low <= high, got {x!r}")
    return (lo, hi)


def _opt_str(x: Any, what: str) -> str | None:
    if x is None or isinstance(x, str):
        return x
    raise ValueError(f"{what} must be a string or null, got {type(x).__name__}")


def _str(x: Any, what: str) -> str:
    if isinstance(x, str):
        return x
    raise ValueError(f"{what} must be a string, got {type(x).__name__}")


@dataclass(frozen=True)
class OperatingPoint:
    """A decision threshold on the calibrated probability of pathology and its measured performance.

    Attributes:
        threshold: probability (0–1) at or above which the study is called "pathology".
        sensitivity: true-positive rate (0–1) at this threshold on the evaluation set.
        specificity: true-negative rate (0–1) at this threshold on the evaluation set.
        sensitivity_ci95: 95 % confidence interval (low, high) of the sensitivity, or None if not measured.
        specificity_ci95: 95 % confidence interval (low, high) of the specificity, or None if not measured.
    """

    threshold: float
    sensitivity: float
    specificity: float
    sensitivity_ci95: tuple[float, float] | None = None
    specificity_ci95: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        _fraction(self.threshold, "threshold")
        _fraction(self.sensitivity, "sensitivity")
        _fraction(self.specificity, "specificity")
        _ci(self.sensitivity_ci95, "sensitivity_ci95")
        _ci(self.specificity_ci95, "specificity_ci95")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (lists for intervals)."""
        return {
            "threshold": self.threshold,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "sensitivity_ci95": None if self.sensitivity_ci95 is None else list(self.sensitivity_ci95),
            "specificity_ci95": None if self.specificity_ci95 is None else list(self.specificity_ci95),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OperatingPoint:
        """Inverse of :meth:`to_dict`; unknown keys are refused, the intervals may be omitted."""
        _refuse_unknown(d, cls.__dataclass_fields__, "operating point")
        _require(d, ("threshold", "sensitivity", "specificity"), "operating point")
        return cls(
            threshold=_fraction(d["threshold"], "threshold"),
            sensitivity=_fraction(d["sensitivity"], "sensitivity"),
            specificity=_fraction(d["specificity"], "specificity"),
            sensitivity_ci95=_ci(d.get("sensitivity_ci95"), "sensitivity_ci95"),
            specificity_ci95=_ci(d.get("specificity_ci95"), "specificity_ci95"),
        )


def _default_calibration() -> dict[str, Any]:
    return {"method": "temperature", "temperature": 1.0}


@dataclass(frozen=True)
class OODRef:
    """Where a model's out-of-distribution statistics are and what they say.

    Attributes:
        method: the OOD score (``mahalanobis``, ``energy`` or ``msp``; see :mod:`ml.ood.scores`).
        uri: the statistics file (``.npz``): path relative to the manifest's directory,
            absolute local path or ``s3://bucket/key``.
        sha256: lowercase hex digest of that file.
        threshold: a study whose score exceeds it is flagged out-of-distribution.
        fitted_on: the corpus the statistics were fitted on (free text).
        n: number of studies used for the fit and the held-out threshold.
        in_distribution_rate: share (0–1) of held-out in-distribution studies that were not flagged.
    """

    method: str
    uri: str
    sha256: str
    threshold: float
    fitted_on: str
    n: int
    in_distribution_rate: float

    def __post_init__(self) -> None:
        if self.method not in OOD_METHODS:
            raise ValueError(f"ood.method must be one of {OOD_METHODS}, got {self.method!r}")
        if not self.uri or ("://" in self.uri and not self.uri.startswith("s3://")):
            raise ValueError(f"ood.uri must be a local path or s3://bucket/key, got {self.uri!r}")
        if not _SHA256_RE.match(self.sha256):
            raise ValueError("ood.sha256 must be 64 lowercase hex digits")
        if not math.isfinite(self.threshold):
            raise ValueError("ood.threshold must be a finite number")
        if self.n < 1:
            raise ValueError("ood.n must be a positive integer")
        _fraction(self.in_distribution_rate, "ood.in_distribution_rate")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "method": self.method,
            "uri": self.uri,
            "sha256": self.sha256,
            "threshold": self.threshold,
            "fitted_on": self.fitted_on,
            "n": self.n,
            "in_distribution_rate": self.in_distribution_rate,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OODRef:
        """Inverse of :meth:`to_dict`; every key is required and unknown keys are refused."""
        if not isinstance(d, Mapping):
            raise ValueError("ood must be an object")
        _refuse_unknown(d, cls.__dataclass_fields__, "ood")
        _require(d, tuple(cls.__dataclass_fields__), "ood")
        n = d["n"]
        if not isinstance(n, int) or isinstance(n, bool):
            raise ValueError("ood.n must be an integer")
        return cls(
            method=_str(d["method"], "ood.method"),
            uri=_str(d["uri"], "ood.uri"),
            sha256=_str(d["sha256"], "ood.sha256"),
            threshold=float(d["threshold"]),
            fitted_on=_str(d["fitted_on"], "ood.fitted_on"),
            n=n,
            in_distribution_rate=_fraction(d["in_distribution_rate"], "ood.in_distribution_rate"),
        )


@dataclass(frozen=True)
class ModelEntry:
    """One servable model of the manifest.

    Attributes:
        name: unique name (the manifest key), e.g. ``resnet34-medicalnet``.
        version: version string of these weights, e.g. ``1.0.0``.
        spec: architecture to build before loading the weights.
        input_size: model input (D, H, W) = (z, y, x) in voxels; equals ``preprocess.target_size``.
        preprocess: the preprocessing the model was trained with.
        operating_points: named thresholds (``balanced``, ``high_sensitivity``, ``high_specificity`` …).
        default_operating_point: the name in ``operating_points`` whose decision is the result's ``label``.
        uri: weight file: path relative to the manifest's directory, absolute local path or ``s3://bucket/key``.
        sha256: lowercase hex digest of the weight file; None = unverified (refused unless allowed).
        stored_dtype: floating dtype of the stored tensors (``float16`` halves the file; loaded as float32).
        calibration: how logits become probabilities: ``{"method": "none"}`` (softmax) or
            ``{"method": "temperature", "temperature": T}`` (softmax of logits / T, T > 0);
            runs also record where T was fitted (``"fitted_on"``: ``"validation"`` or
            ``"tuning corpus"``).
        metrics: free-form JSON from the evaluation (AUC, confusion matrices, provenance …).
        training_data: description of the training data.
        intended_use: intended-use statement.
        clinical_use: whether the model is validated for clinical use (False: "not for clinical use").
        model_card: path of the model card relative to the manifest's directory, or None.
        license: license of the weights (free text), or None.
        notes: free text, or None.
        ood: the out-of-distribution statistics that travel with the weights, or None (no OOD check).
        shadow_of: the primary model this entry shadows (runs beside it, never served), or None;
            same input as the primary, no chains, never the default (checked by :class:`Manifest`).
    """

    name: str
    version: str
    spec: ModelSpec
    input_size: tuple[int, int, int]
    preprocess: PreprocessConfig
    operating_points: dict[str, OperatingPoint]
    default_operating_point: str
    uri: str
    sha256: str | None = None
    stored_dtype: StoredDtype = "float32"
    calibration: dict[str, Any] = field(default_factory=_default_calibration)
    metrics: dict[str, Any] = field(default_factory=dict)
    training_data: str = ""
    intended_use: str = ""
    clinical_use: bool = False
    model_card: str | None = None
    license: str | None = None
    notes: str | None = None
    ood: OODRef | None = None
    shadow_of: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise ValueError("model entry needs a non-empty name and version")
        if len(self.input_size) != 3 or any(int(s) < 1 for s in self.input_size):
            raise ValueError(
                f"{self.name}: input_size must be 3 positive ints (D, H, W), got {self.input_size}"
            )
        if tuple(self.preprocess.target_size) != tuple(self.input_size):
            raise ValueError(
                f"{self.name}: preprocess.target_size {tuple(self.preprocess.target_size)} "
                f"differs from input_size {tuple(self.input_size)}"
            )
        if not self.operating_points:
            raise ValueError(f"{self.name}: at least one operating point is required")
        if self.default_operating_point not in self.operating_points:
            raise ValueError(
                f"{self.name}: default_operating_point {self.default_operating_point!r} "
                f"not in operating_points {sorted(self.operating_points)}"
            )
        if not self.uri:
            raise ValueError(f"{self.name}: uri must not be empty")
        if "://" in self.uri and not self.uri.startswith("s3://"):
            raise ValueError(f"{self.name}: uri must be a local path or s3://bucket/key, got {self.uri!r}")
        if self.sha256 is not None and not _SHA256_RE.match(self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits or null")
        if self.stored_dtype not in ("float16", "float32"):
            raise ValueError(f"{self.name}: stored_dtype must be 'float16' or 'float32'")
        if not isinstance(self.clinical_use, bool):
            raise ValueError(f"{self.name}: clinical_use must be true or false")
        method = self.calibration.get("method")
        if method not in _CALIBRATION_METHODS:
            raise ValueError(f"{self.name}: calibration method must be one of {_CALIBRATION_METHODS}")
        if method == "temperature":
            t = self.calibration.get("temperature")
            if not isinstance(t, int | float) or isinstance(t, bool) or not (math.isfinite(t) and t > 0):
                raise ValueError(f"{self.name}: temperature calibration needs a positive 'temperature'")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (field order as declared; lists for tuples)."""
        return {
            "name": self.name,
            "version": self.version,
            "spec": self.spec.to_dict(),
            "input_size": list(self.input_size),
            "preprocess": self.preprocess.to_dict(),
            "operating_points": {k: v.to_dict() for k, v in self.operating_points.items()},
            "default_operating_point": self.default_operating_point,
            "uri": self.uri,
            "sha256": self.sha256,
            "stored_dtype": self.stored_dtype,
            "calibration": dict(self.calibration),
            "metrics": dict(self.metrics),
            "training_data": self.training_data,
            "intended_use": self.intended_use,
            "clinical_use": self.clinical_use,
            "model_card": self.model_card,
            "license": self.license,
            "notes": self.notes,
            **({"ood": self.ood.to_dict()} if self.ood is not None else {}),
            **({"shadow_of": self.shadow_of} if self.shadow_of is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelEntry:
        """Inverse of :meth:`to_dict`; unknown keys (also inside ``spec``) raise ValueError."""
        _refuse_unknown(d, cls.__dataclass_fields__, "model entry")
        required = (
            "name",
            "version",
            "spec",
            "input_size",
            "preprocess",
            "operating_points",
            "default_operating_point",
            "uri",
        )
        _require(d, required, f"model entry {d.get('name', '?')!r}")
        _refuse_unknown(d["spec"], ModelSpec.__dataclass_fields__, "spec")
        ins = d["input_size"]
        if len(ins) != 3:
            raise ValueError(f"input_size must be [D, H, W], got {ins!r}")
        ops = d["operating_points"]
        if not isinstance(ops, Mapping):
            raise ValueError("operating_points must be an object {name: {...}}")
        clinical = d.get("clinical_use", False)
        if not isinstance(clinical, bool):
            raise ValueError("clinical_use must be true or false")
        for key in ("calibration", "metrics"):
            if key in d and not isinstance(d[key], Mapping):
                raise ValueError(f"{key} must be an object")
        return cls(
            name=_str(d["name"], "name"),
            version=_str(d["version"], "version"),
            spec=ModelSpec.from_dict(dict(d["spec"])),
            input_size=(int(ins[0]), int(ins[1]), int(ins[2])),
            preprocess=PreprocessConfig.from_dict(dict(d["preprocess"])),
            operating_points={str(k): OperatingPoint.from_dict(v) for k, v in ops.items()},
            default_operating_point=_str(d["default_operating_point"], "default_operating_point"),
            uri=_str(d["uri"], "uri"),
            sha256=_opt_str(d.get("sha256"), "sha256"),
            stored_dtype=cast(StoredDtype, d.get("stored_dtype", "float32")),
            calibration=dict(d.get("calibration", _default_calibration())),
            metrics=dict(d.get("metrics", {})),
            training_data=_str(d.get("training_data", ""), "training_data"),
            intended_use=_str(d.get("intended_use", ""), "intended_use"),
            clinical_use=clinical,
            model_card=_opt_str(d.get("model_card"), "model_card"),
            license=_opt_str(d.get("license"), "license"),
            notes=_opt_str(d.get("notes"), "notes"),
            ood=None if d.get("ood") is None else OODRef.from_dict(d["ood"]),
            shadow_of=_opt_str(d.get("shadow_of"), "shadow_of"),
        )


@dataclass
class Manifest:
    """All servable models and the default one (see the module docstring for the JSON layout)."""

    entries: dict[str, ModelEntry]
    default: str

    def __post_init__(self) -> None:
        for key, entry in self.entries.items():
            if key != entry.name:
                raise ValueError(f"manifest key {key!r} differs from the entry's name {entry.name!r}")
        if self.entries and self.default not in self.entries:
            raise ValueError(f"default model {self.default!r} not in manifest {sorted(self.entries)}")
        for entry in self.entries.values():
            if entry.shadow_of is not None:
                _check_shadow(entry, self.entries, self.default)

    def shadows_of(self, primary: str) -> list[ModelEntry]:
        """The entries that shadow ``primary`` (sorted by name)."""
        return [e for _, e in sorted(self.entries.items()) if e.shadow_of == primary]

    def get(self, name: str | None = None) -> ModelEntry:
        """The entry ``name`` (None: the default); unknown names raise :class:`ModelUnavailable`."""
        key = self.default if name is None else name
        entry = self.entries.get(key)
        if entry is None:
            raise ModelUnavailable(f"unknown model {key!r}; available: {sorted(self.entries)}")
        return entry

    def upsert(self, entry: ModelEntry) -> None:
        """Add ``entry`` or replace the entry of the same name (the default is unchanged)."""
        self.entries[entry.name] = entry
        if not self.default:
            self.default = entry.name

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; entries sorted by name so that saving is deterministic."""
        return {
            "schema_version": SCHEMA_VERSION,
            "default": self.default,
            "models": {k: self.entries[k].to_dict() for k in sorted(self.entries)},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        """Inverse of :meth:`to_dict`; unknown keys and other schema versions raise ValueError."""
        _refuse_unknown(d, ("schema_version", "default", "models"), "manifest")
        _require(d, ("default", "models"), "manifest")
        version = d.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"unsupported manifest schema_version {version!r} (this code reads {SCHEMA_VERSION})"
            )
        models = d["models"]
        if not isinstance(models, Mapping):
            raise ValueError("manifest 'models' must be an object {name: entry}")
        entries: dict[str, ModelEntry] = {}
        for key, raw in models.items():
            try:
                entries[str(key)] = ModelEntry.from_dict(raw)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                raise ValueError(f"manifest model {key!r}: {exc}") from exc
        return cls(entries=entries, default=_str(d["default"], "default"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        """Read a manifest JSON file (errors name the file)."""
        p = Path(path)
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
            return cls.from_dict(raw)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"invalid weights manifest {p}: {exc}") from exc

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the manifest as pretty, stable JSON (2-space indent, trailing newline), atomically."""
        _atomic_write(Path(path), _pretty_json(self.to_dict()).encode("utf-8"))


def _check_shadow(entry: ModelEntry, entries: Mapping[str, ModelEntry], default: str) -> None:
    """A shadow's primary exists, is no shadow itself, and takes the same input."""
    name, primary = entry.name, entries.get(entry.shadow_of or "")
    if primary is None:
        raise ValueError(f"{name}: shadow_of names {entry.shadow_of!r}, which is not in the manifest")
    if primary.name == name:
        raise ValueError(f"{name}: a model cannot shadow itself")
    if primary.shadow_of is not None:
        raise ValueError(f"{name}: shadows {primary.name!r}, itself a shadow (no chains)")
    if name == default:
        raise ValueError(f"{name}: a shadow model cannot be the default")
    if (
        entry.input_size != primary.input_size
        or entry.preprocess != primary.preprocess
        or entry.spec.in_channels != primary.spec.in_channels
    ):
        raise ValueError(
            f"{name}: a shadow must take its primary's input (input_size, preprocess, in_channels)"
        )


#: a JSON array of scalars spread over lines by ``indent`` (raw newlines never occur inside JSON strings)
_SCALAR_ARRAY = re.compile(r"\[\n\s+([^\[\]{}\n]*(?:\n\s+[^\[\]{}\n]*)*)\n\s*\]")


def _pretty_json(obj: Any) -> str:
    """2-space indented JSON with arrays of scalars kept on one line, trailing newline."""
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    return _SCALAR_ARRAY.sub(lambda m: "[" + re.sub(r"\n\s+", " ", m.group(1)) + "]", text) + "\n"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
