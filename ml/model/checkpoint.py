"""The one checkpoint loader, and the writer of the shipped weight files.

Checkpoints are read with ``torch.load(..., weights_only=True)`` only (no
arbitrary unpickling). :func:`load_checkpoint` understands plain state dicts
(optionally ``module.``-prefixed by DataParallel), MedicalNet pretrained files
(``{"state_dict": {"module.conv1.weight": ...}}``, segmentation head
``conv_seg.*`` dropped, classifier ``fc.*`` absent and newly initialised) and
Lightning checkpoints (``state_dict`` keys prefixed by the LightningModule
attribute holding the network, e.g. ``model.``). :func:`load_model` builds a
manifest entry's network (:class:`~ml.model.spec.ModelSpec`) and loads its
weight file, found and verified by :func:`ml.model.weights.resolve_weights`;
:func:`save_weights` writes a plain state dict and returns its sha256 for the
manifest (:mod:`ml.model.manifest`).
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ml.errors import ModelUnavailable
from ml.io import sha256_file
from ml.model.manifest import ModelEntry, StoredDtype
from ml.model.network import ResNet3D, build_model

__all__ = [
    "CheckpointKind",
    "LoadReport",
    "load_checkpoint",
    "load_model",
    "save_weights",
]

CheckpointKind = Literal["auto", "state_dict", "medicalnet", "lightning"]

_LIGHTNING_MARKERS = ("pytorch-lightning_version", "epoch", "global_step")
#: prefixes added by wrappers around a whole network (DataParallel/DDP, torch.compile)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: MedicalNet's segmentation head, absent from the classifier
_MEDICALNET_DROP = "conv_seg."
#: the classifier head, absent from MedicalNet's pretrained files
_HEAD_PREFIX = "fc."
#: how many keys an error detail lists per category before "... (+N more)"
_DETAIL_CAP = 8


# --------------------------------------------------------------------------- checkpoints


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did.

    Attributes:
        kind: detected or requested checkpoint kind (``state_dict``, ``medicalnet``, ``lightning``).
        prefix: key prefix that was stripped (e.g. ``module.`` or ``model.``), "" if none.
        loaded: model keys whose values were copied from the checkpoint.
        missing: model keys absent from the checkpoint (an error when strict).
        unexpected: checkpoint keys (after stripping) that the model lacks (an error when strict).
        shape_mismatch: (key, expected shape, checkpoint shape) triples (an error when strict).
        dropped: checkpoint keys deliberately ignored (MedicalNet ``conv_seg.*``; Lightning
            attributes other than the network).
        reinitialised: model keys deliberately left freshly initialised (MedicalNet ``fc.*``;
            BatchNorm ``num_batches_tracked`` of checkpoints written before PyTorch 0.4.1).
    """

    kind: str
    prefix: str = ""
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is missing, unexpected or of the wrong shape."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def problems(self) -> str:
        """Human summary of the errors (capped lists with counts), "" when :attr:`ok`."""
        parts: list[str] = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                parts.append(f"{len(keys)} {label} key(s): {_capped(keys)}")
        if self.shape_mismatch:
            items = [f"{k} expected {list(e)} got {list(g)}" for k, e, g in self.shape_mismatch]
            parts.append(f"{len(items)} shape mismatch(es): {_capped(items)}")
        return "; ".join(parts)


def _capped(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_DETAIL_CAP])
    more = len(items) - _DETAIL_CAP
    return f"{shown}, … (+{more} more)" if more > 0 else shown


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
_UNPICKLER_ERROR = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")


def _torch_load(path: Path, safe_globals: Sequence[Any]) -> Any:
    if not path.is_file():
        raise ModelUnavailable(f"checkpoint {path} not found")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        glob = _UNSUPPORTED_GLOBAL.search(msg)
        if glob:
            raise ModelUnavailable(
                f"checkpoint {path.name} holds a {glob.group(1)} object, which safe loading "
                "(weights_only=True) refuses; re-export the weights as a plain state dict "
                "(ml.model.checkpoint.save_weights) or pass that class in safe_globals if it is trusted"
            ) from exc
        found = _UNPICKLER_ERROR.search(msg)
        why = found.group(1) if found else "unpickling failed"
        raise ModelUnavailable(f"checkpoint {path.name} is not a readable torch file ({why})") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelUnavailable(f"checkpoint {path.name} is not a readable torch file: {exc}") from exc


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _detect(obj: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """(kind, raw state dict) of a loaded checkpoint object."""
    inner = obj.get("state_dict")
    if isinstance(inner, Mapping):
        if any(m in obj for m in _LIGHTNING_MARKERS):
            return "lightning", inner
        return "medicalnet", inner
    return "state_dict", obj


def _unwrap(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    inner = obj.get("state_dict")
    if kind in ("lightning", "medicalnet") and isinstance(inner, Mapping):
        return inner
    if kind == "lightning":
        raise ModelUnavailable("checkpoint has no 'state_dict' entry; it is not a Lightning checkpoint")
    return obj


def _strip_wrappers(keys: Sequence[str]) -> str:
    """Longest chain of wrapper prefixes (``module.``, ``_orig_mod.``) shared by all keys."""
    prefix = ""
    while keys:
        for w in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix + w) for k in keys):
                prefix += w
                break
        else:
            break
    return prefix


def _best_prefix(keys: Sequence[str], model_keys: set[str]) -> str:
    """The attribute prefix (e.g. ``model.``) under which most checkpoint keys match the model."""
    candidates = {""}
    for k in keys:
        for i, ch in enumerate(k):
            if ch == ".":
                candidates.add(k[: i + 1])
    best, best_score = "", -1
    for p in sorted(candidates, key=len):
        score = sum(1 for k in keys if k.startswith(p) and k[len(p) :] in model_keys)
        if score > best_score:
            best, best_score = p, score
    return best


def _head_prefixes(model: nn.Module) -> list[str]:
    names = {n.rsplit(".", 1)[0] + "." for n, _ in model.named_parameters() if n.startswith(_HEAD_PREFIX)}
    return sorted(names)


def load_checkpoint(
    model: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    kind: CheckpointKind = "auto",
    strict: bool = True,
    safe_globals: Sequence[Any] = (),
) -> LoadReport:
    """Load weights into ``model`` in place from a file or an in-memory checkpoint.

    Args:
        model: the network (its dtype decides the loaded dtype: float16 tensors are cast).
        source: path of a ``torch.save`` file (read with ``weights_only=True``) or the loaded object.
        kind: ``auto`` detects: a dict with ``state_dict`` and ``pytorch-lightning_version``/``epoch``/
            ``global_step`` is Lightning; another dict with ``state_dict`` is MedicalNet; a flat
            mapping of tensors is a plain state dict.
        strict: raise on any missing, unexpected or wrongly shaped key (other than the documented
            drops and re-initialisations); when False, load what fits and report the rest.
        safe_globals: trusted classes that the file may contain besides tensors and primitives
            (e.g. a dataclass in Lightning ``hyper_parameters``); passed to
            ``torch.serialization.safe_globals``. Leave empty for files of unknown origin.

    Returns:
        A :class:`LoadReport`.

    Raises:
        ModelUnavailable: unreadable/unsafe file, not a checkpoint, or (strict) key problems,
            listed by name with counts.
    """
    if kind not in ("auto", "state_dict", "medicalnet", "lightning"):
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    obj: Any = source if isinstance(source, Mapping) else _torch_load(Path(source), safe_globals)
    if not isinstance(obj, Mapping):
        raise ModelUnavailable(f"checkpoint is a {type(obj).__name__}, not a state dict")
    if kind == "auto":
        found, raw = _detect(obj)
    else:
        found, raw = kind, _unwrap(obj, kind)
    if not _is_tensor_mapping(raw):
        bad = [str(k) for k, v in raw.items() if not isinstance(v, torch.Tensor)]
        raise ModelUnavailable(f"{found} checkpoint: non-tensor entries {_capped(bad)} (not a state dict)")
    sd: dict[str, torch.Tensor] = {str(k): v for k, v in raw.items()}
    target = model.state_dict()
    model_keys = set(target)
    report = LoadReport(kind=found)

    # 1. prefixes: Lightning attribute (chosen by best match) and wrapper prefixes
    keys = list(sd)
    if found == "lightning":
        attr = _best_prefix(keys, model_keys | {w + k for w in _WRAPPER_PREFIXES for k in model_keys})
        report.dropped += [k for k in keys if not k.startswith(attr)]
        keys = [k for k in keys if k.startswith(attr)]
    else:
        attr = ""
    inner = _strip_wrappers([k[len(attr) :] for k in keys])
    report.prefix = attr + inner
    n = len(report.prefix)
    stripped = {k[n:]: sd[k] for k in keys}

    # 2. MedicalNet: segmentation head dropped, classifier head absent → fresh
    reinit_modules: list[str] = []
    if found == "medicalnet":
        seg = sorted(k for k in stripped if k.startswith(_MEDICALNET_DROP))
        report.dropped += [report.prefix + k for k in seg]
        for k in seg:
            del stripped[k]
        for head in _head_prefixes(model):
            if not any(k.startswith(head) for k in stripped):
                reinit_modules.append(head[:-1])
                report.reinitialised += sorted(k for k in model_keys if k.startswith(head))

    # 3. compare with the model
    state: dict[str, torch.Tensor] = {}
    for k, v in stripped.items():
        if k not in target:
            report.unexpected.append(k)
            continue
        want = target[k]
        if tuple(v.shape) != tuple(want.shape):
            report.shape_mismatch.append((k, tuple(want.shape), tuple(v.shape)))
            continue
        state[k] = v.to(dtype=want.dtype) if v.is_floating_point() and want.is_floating_point() else v
    for k in target:
        if k in state or k in report.reinitialised or any(k == m for m, _, _ in report.shape_mismatch):
            continue
        if k.endswith(".num_batches_tracked"):
            report.reinitialised.append(k)  # absent from pre-0.4.1 checkpoints; PyTorch itself fills 0
            state[k] = torch.zeros_like(target[k])
        else:
            report.missing.append(k)
    report.missing.sort()
    report.unexpected.sort()
    report.shape_mismatch.sort()
    if strict and not report.ok:
        raise ModelUnavailable(f"{found} checkpoint does not fit the model: {report.problems()}")

    model.load_state_dict(state, strict=False)
    for name in reinit_modules:
        mod = model.get_submodule(name)
        reset = getattr(mod, "reset_parameters", None)
        if callable(reset):
            reset()
    report.loaded = sorted(state)
    return report


def load_model(
    entry: ModelEntry, weights_path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> ResNet3D:
    """Build ``entry.spec``, load ``weights_path`` strictly, and return it float32 in eval mode on ``device``.

    MedicalNet pretrained files are refused here (their classifier head would be random);
    use :func:`load_checkpoint` directly to start a fine-tuning from them.
    """
    model = build_model(entry.spec)
    report = load_checkpoint(model, weights_path, strict=True)
    if report.reinitialised and any(k.startswith(_HEAD_PREFIX) for k in report.reinitialised):
        raise ModelUnavailable(
            f"model {entry.name!r}: weights have no classifier head ({_capped(report.reinitialised)}); "
            "a MedicalNet backbone must be fine-tuned before it can serve"
        )
    return model.float().eval().to(device)


def save_weights(model: nn.Module, path: str | os.PathLike[str], dtype: StoredDtype = "float16") -> str:
    """Write ``model``'s state dict atomically as a plain file; return its sha256 (lowercase hex).

    Floating tensors are cast to ``dtype`` (``float16`` halves the file) and moved to the CPU.
    The file is a plain state dict (``kind="state_dict"``) readable with ``weights_only=True``.
    """
    if dtype not in ("float16", "float32"):
        raise ValueError("dtype must be 'float16' or 'float32'")
    tdtype = torch.float16 if dtype == "float16" else torch.float32
    sd = {
        k: (v.detach().to("cpu", tdtype) if v.is_floating_point() else v.detach().to("cpu"))
        .contiguous()
        .clone()
        for k, v in model.state_dict().items()
    }
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    os.close(fd)
    try:
        torch.save(sd, tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256_file(p)
