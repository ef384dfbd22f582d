"""Tests of ml.model: manifest, weight resolution, the checkpoint loader (three kinds), fp16 shipping."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ml.errors import ModelUnavailable
from ml.io import sha256_file
from ml.model import Manifest, ModelEntry, ModelSpec, OperatingPoint, resolve_weights
from ml.model.checkpoint import load_checkpoint, load_model, save_weights
from ml.model.network import ResNet3D, build_model
from ml.preprocess import PreprocessConfig

REPO = Path(__file__).resolve().parents[3]
#: a few-parameter ResNet-10 (conv1 keeps MedicalNet's 64 channels; stages are 8 wide)
TINY = ModelSpec(arch="resnet10", widths=(8, 8, 8, 8))
X = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))


def _tiny(seed: int) -> ResNet3D:
    torch.manual_seed(seed)
    model = build_model(TINY)
    with torch.no_grad():  # non-trivial BN statistics so that buffers are compared too
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(7)
    return model


def _assert_same(model: nn.Module, source: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    got = model.state_dict()
    for k, v in source.items():
        if k.startswith(skip):
            continue
        assert torch.equal(got[k], v.to(got[k].dtype)), k


def _entry(**kw: Any) -> ModelEntry:
    base: dict[str, Any] = dict(
        name="tiny",
        version="0.0.1",
        spec=TINY,
        input_size=(16, 16, 16),
        preprocess=PreprocessConfig(target_size=(16, 16, 16)),
        operating_points={
            "balanced": OperatingPoint(0.5, 0.8, 0.7, (0.7, 0.9), (0.6, 0.8)),
            "high_sensitivity": OperatingPoint(0.2, 0.95, 0.4),
        },
        default_operating_point="balanced",
        uri="tiny.pt",
        sha256=None,
        stored_dtype="float16",
        metrics={"auc": 0.9, "roc": {"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]}},
        training_data="synthetic phantoms",
        intended_use="tests",
        model_card="cards/tiny.md",
        license="Apache-2.0",
        notes="not for clinical use",
    )
    base.update(kw)
    return ModelEntry(**base)


# --------------------------------------------------------------------------- checkpoint kinds


def test_plain_state_dict_file_and_dataparallel_prefix(tmp_path: Path) -> None:
    src = _tiny(1).state_dict()
    torch.save(src, tmp_path / "plain.pt")
    model = _tiny(2)
    report = load_checkpoint(model, tmp_path / "plain.pt")
    assert (report.kind, report.prefix, report.ok) == ("state_dict", "", True)
    assert report.loaded == sorted(src)
    _assert_same(model, src)

    model = _tiny(3)
    report = load_checkpoint(model, {"module." + k: v for k, v in src.items()})
    assert (report.kind, report.prefix) == ("state_dict", "module.")
    _assert_same(model, src)


def test_medicalnet_checkpoint_drops_seg_head_and_reinitialises_fc(tmp_path: Path) -> None:
    src = {k: v for k, v in _tiny(1).state_dict().items() if not k.startswith("fc.")}
    ckpt = {"module." + k: v for k, v in src.items()}
    ckpt["module.conv_seg.0.weight"] = torch.randn(32, 8, 3, 3, 3)  # MedicalNet segmentation head
    ckpt["module.conv_seg.4.bias"] = torch.randn(2)
    torch.save({"state_dict": ckpt}, tmp_path / "resnet_10.pth")
    model = _tiny(2)
    with torch.no_grad():
        model.fc.weight.zero_()
    report = load_checkpoint(model, tmp_path / "resnet_10.pth")
    assert report.kind == "medicalnet" and report.prefix == "module." and report.ok
    assert report.dropped == ["module.conv_seg.0.weight", "module.conv_seg.4.bias"]
    assert report.reinitialised == ["fc.bias", "fc.weight"]
    _assert_same(model, src)
    assert model.fc.weight.abs().sum() > 0  # freshly initialised, not left as it was


def test_medicalnet_without_num_batches_tracked_loads() -> None:
    """Checkpoints written before PyTorch 0.4.1 lack BatchNorm's counter; PyTorch itself tolerates that."""
    src = {k: v for k, v in _tiny(1).state_dict().items() if not k.endswith("num_batches_tracked")}
    model = _tiny(2)
    report = load_checkpoint(model, {"state_dict": {"module." + k: v for k, v in src.items()}})
    assert report.ok and "bn1.num_batches_tracked" in report.reinitialised
    _assert_same(model, src)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_lightning_checkpoint_from_a_real_trainer(tmp_path: Path) -> None:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    class Lit(L.LightningModule):
        def __init__(self, lr: float = 0.01) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = _tiny(1)
            self.criterion = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0]))  # a non-network buffer

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return self.criterion(self.model(x), y)  # type: ignore[no-any-return]

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])

    lit = Lit()
    loader = DataLoader(TensorDataset(X, torch.tensor([0, 1])), batch_size=2)
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(lit, loader)
    trainer.save_checkpoint(tmp_path / "lit.ckpt")
    raw = torch.load(tmp_path / "lit.ckpt", weights_only=True)  # safe loading works as is
    assert "pytorch-lightning_version" in raw and raw["global_step"] == 1

    model = _tiny(2)
    report = load_checkpoint(model, tmp_path / "lit.ckpt")
    assert (report.kind, report.prefix, report.ok) == ("lightning", "model.", True)
    assert report.dropped == ["criterion.weight"]
    _assert_same(model, lit.model.state_dict())
    assert not torch.equal(lit.model.fc.weight, _tiny(1).fc.weight)  # the step did change weights


def test_lightning_structured_dict_with_dataparallel_inside() -> None:
    src = _tiny(1).state_dict()
    ckpt = {
        "epoch": 0,
        "global_step": 1,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": {"net.module." + k: v for k, v in src.items()},
        "hyper_parameters": {"lr": 0.1},
    }
    model = _tiny(2)
    report = load_checkpoint(model, ckpt)
    assert (report.kind, report.prefix) == ("lightning", "net.module.")
    _assert_same(model, src)


def test_explicit_kind_and_bad_sources(tmp_path: Path) -> None:
    src = _tiny(1).state_dict()
    model = _tiny(2)
    assert load_checkpoint(model, src, kind="state_dict").kind == "state_dict"
    with pytest.raises(ModelUnavailable, match="not a Lightning checkpoint"):
        load_checkpoint(model, src, kind="lightning")
    with pytest.raises(ModelUnavailable, match="non-tensor"):
        load_checkpoint(model, {"state_dict": {"conv1.weight": "x"}})
    with pytest.raises(ModelUnavailable, match="not found"):
        load_checkpoint(model, tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelUnavailable, match="not a readable"):
        load_checkpoint(model, tmp_path / "junk.pt")
    # arbitrary objects are refused by safe unpickling, with a clear message
    torch.save({"state_dict": src, "spec": TINY}, tmp_path / "pickled.pt")
    unsafe = r"holds a ml\.model\.spec\.ModelSpec object.*weights_only=True"
    with pytest.raises(ModelUnavailable, match=unsafe):
        load_checkpoint(model, tmp_path / "pickled.pt")
    assert load_checkpoint(model, tmp_path / "pickled.pt", kind="medicalnet", safe_globals=[ModelSpec]).ok


# --------------------------------------------------------------------------- key problems


def test_extra_missing_and_misshaped_keys_are_named() -> None:
    src = _tiny(1).state_dict()
    extra = dict(src, **{"layer9.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(ModelUnavailable, match=r"1 unexpected key\(s\): layer9\.0\.conv1\.weight"):
        load_checkpoint(_tiny(2), extra)
    missing = {k: v for k, v in src.items() if k != "layer2.0.bn2.running_var"}
    with pytest.raises(ModelUnavailable, match=r"1 missing key\(s\): layer2\.0\.bn2\.running_var"):
        load_checkpoint(_tiny(2), missing)
    wrong = dict(src, **{"fc.weight": torch.zeros(3, 8)})
    with pytest.raises(ModelUnavailable, match=r"fc\.weight expected \[2, 8\] got \[3, 8\]") as exc:
        load_checkpoint(_tiny(2), wrong)
    assert exc.value.code == "model_unavailable"

    # non-strict: what fits is loaded, the rest reported, the model keeps its own values elsewhere
    model = _tiny(2)
    fc_before = model.fc.weight.clone()
    report = load_checkpoint(model, wrong, strict=False)
    assert report.shape_mismatch == [("fc.weight", (2, 8), (3, 8))] and not report.missing
    assert torch.equal(model.fc.weight, fc_before)
    _assert_same(model, {k: v for k, v in src.items() if k != "fc.weight"})


def test_error_detail_caps_long_lists_but_gives_counts() -> None:
    src = _tiny(1).state_dict()
    with pytest.raises(ModelUnavailable) as exc:
        load_checkpoint(_tiny(2), {"conv1.weight": src["conv1.weight"]})
    n = sum(1 for k in src if not k.endswith("num_batches_tracked")) - 1  # counters are tolerated
    assert f"{n} missing key(s)" in exc.value.detail and f"(+{n - 8} more)" in exc.value.detail


def test_other_architecture_is_refused() -> None:
    src = _tiny(1).state_dict()
    with pytest.raises(ModelUnavailable, match="missing key"):  # resnet18 has layerN.1 blocks
        load_checkpoint(build_model(ModelSpec(arch="resnet18", widths=(8, 8, 8, 8))), src)


# --------------------------------------------------------------------------- shipping weights


def test_fp16_round_trip_and_load_model(tmp_path: Path) -> None:
    source = _tiny(1).eval()
    sha16 = save_weights(source, tmp_path / "w16.pt", dtype="float16")
    sha32 = save_weights(source, tmp_path / "w32.pt", dtype="float32")
    assert (
        sha16
        == sha256_file(tmp_path / "w16.pt")
        == hashlib.sha256((tmp_path / "w16.pt").read_bytes()).hexdigest()
    )
    assert (tmp_path / "w16.pt").stat().st_size < 0.6 * (tmp_path / "w32.pt").stat().st_size
    stored = torch.load(tmp_path / "w16.pt", weights_only=True)
    assert stored["conv1.weight"].dtype == torch.float16
    assert stored["bn1.num_batches_tracked"].dtype == torch.int64

    entry = _entry(uri="w16.pt", sha256=sha16)
    model = load_model(entry, resolve_weights(entry, tmp_path))
    assert not model.training and next(model.parameters()).dtype == torch.float32
    for k, v in source.state_dict().items():
        want = v.half().to(v.dtype) if v.is_floating_point() else v
        assert torch.equal(model.state_dict()[k], want), k
    with torch.no_grad():
        torch.testing.assert_close(model(X), source(X), atol=2e-2, rtol=2e-2)
        model32 = load_model(_entry(uri="w32.pt", sha256=sha32), tmp_path / "w32.pt")
        assert torch.equal(model32(X), source(X))


def test_load_model_refuses_a_backbone_without_classifier(tmp_path: Path) -> None:
    src = {"module." + k: v for k, v in _tiny(1).state_dict().items() if not k.startswith("fc.")}
    torch.save({"state_dict": src}, tmp_path / "backbone.pth")
    with pytest.raises(ModelUnavailable, match="no classifier head"):
        load_model(_entry(), tmp_path / "backbone.pth")


# --------------------------------------------------------------------------- resolution


def test_resolve_relative_absolute_and_hash_checks(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    sha = save_weights(_tiny(1), tmp_path / "models" / "tiny.pt")
    entry = _entry(uri="models/tiny.pt", sha256=sha)
    assert resolve_weights(entry, tmp_path) == tmp_path / "models" / "tiny.pt"
    absolute = dataclasses.replace(entry, uri=str(tmp_path / "models" / "tiny.pt"))
    assert resolve_weights(absolute, "/nonexistent") == tmp_path / "models" / "tiny.pt"

    bad = dataclasses.replace(entry, sha256="0" * 64)
    with pytest.raises(ModelUnavailable, match=f"expected 000000000000…, got {sha[:12]}…"):
        resolve_weights(bad, tmp_path)
    with pytest.raises(ModelUnavailable, match="not found"):
        resolve_weights(dataclasses.replace(entry, uri="models/absent.pt"), tmp_path)
    unverified = dataclasses.replace(entry, sha256=None)
    with pytest.raises(ModelUnavailable, match="no sha256"):
        resolve_weights(unverified, tmp_path)
    assert resolve_weights(unverified, tmp_path, allow_unverified=True).is_file()


def test_s3_uri_needs_a_fetcher(tmp_path: Path) -> None:
    sha = save_weights(_tiny(1), tmp_path / "cache.pt")
    entry = _entry(uri="s3://bucket/models/tiny.pt", sha256=sha)
    with pytest.raises(ModelUnavailable, match="no fetcher"):
        resolve_weights(entry, tmp_path)
    asked: list[str] = []

    def fetch(uri: str) -> Path:
        asked.append(uri)
        return tmp_path / "cache.pt"

    assert resolve_weights(entry, tmp_path, fetch) == tmp_path / "cache.pt"
    assert asked == ["s3://bucket/models/tiny.pt"]

    def failing(uri: str) -> Path:
        raise ConnectionError("endpoint unreachable")

    with pytest.raises(ModelUnavailable, match="endpoint unreachable"):
        resolve_weights(entry, tmp_path, failing)


# --------------------------------------------------------------------------- manifest


def test_manifest_round_trip_is_stable(tmp_path: Path) -> None:
    a = _entry()
    b = _entry(name="other", uri="s3://b/k.pt", sha256="ab" * 32, calibration={"method": "none"})
    m = Manifest({"tiny": a, "other": b}, default="tiny")
    m.save(tmp_path / "manifest.json")
    first = (tmp_path / "manifest.json").read_bytes()
    loaded = Manifest.load(tmp_path / "manifest.json")
    assert loaded == m
    loaded.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == first
    doc = json.loads(first)
    assert list(doc["models"]) == ["other", "tiny"] and doc["schema_version"] == 1
    assert b'"input_size": [16, 16, 16]' in first  # short arrays stay on one line

    assert m.get(None) is a and m.get("other") is b
    with pytest.raises(ModelUnavailable, match="unknown model 'nope'"):
        m.get("nope")
    m.upsert(dataclasses.replace(b, version="2"))
    assert m.get("other").version == "2" and m.default == "tiny"


def test_manifest_refuses_unknown_keys_and_inconsistent_entries(tmp_path: Path) -> None:
    d = _entry().to_dict()
    with pytest.raises(ValueError, match="unknown model entry keys: \\['colour'\\]"):
        ModelEntry.from_dict(dict(d, colour="red"))
    with pytest.raises(ValueError, match="unknown spec keys"):
        ModelEntry.from_dict(dict(d, spec=dict(d["spec"], depth=10)))
    with pytest.raises(ValueError, match="unknown operating point keys"):
        ModelEntry.from_dict(
            dict(d, operating_points={"balanced": {**d["operating_points"]["balanced"], "ppv": 1}})
        )
    with pytest.raises(ValueError, match="target_size"):
        ModelEntry.from_dict(dict(d, input_size=[32, 32, 32]))
    with pytest.raises(ValueError, match="default_operating_point"):
        ModelEntry.from_dict(dict(d, default_operating_point="strict"))
    with pytest.raises(ValueError, match="missing required keys: \\['uri'\\]"):
        ModelEntry.from_dict({k: v for k, v in d.items() if k != "uri"})
    with pytest.raises(ValueError, match="sha256"):
        ModelEntry.from_dict(dict(d, sha256="XYZ"))
    with pytest.raises(ValueError, match="clinical_use"):
        ModelEntry.from_dict(dict(d, clinical_use="false"))
    with pytest.raises(ValueError, match="temperature"):
        ModelEntry.from_dict(dict(d, calibration={"method": "temperature", "temperature": 0}))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        OperatingPoint(1.5, 0.5, 0.5)
    (tmp_path / "m.json").write_text(json.dumps({"default": "tiny", "models": {"tiny": d}, "extra": 1}))
    with pytest.raises(ValueError, match=r"m\.json.*unknown manifest keys"):
        Manifest.load(tmp_path / "m.json")
    with pytest.raises(ValueError, match="differs from the entry's name"):
        Manifest({"alias": _entry()}, default="alias")


def test_shipped_manifest_parses() -> None:
    m = Manifest.load(REPO / "weights" / "manifest.json")
    assert m.default in m.entries
    prod = m.get("resnet34-medicalnet")
    assert prod.spec == ModelSpec(arch="resnet34", shortcut_type="A")  # MedicalNet resnet_34 backbone
    assert prod.input_size == (256, 256, 256) and prod.preprocess == PreprocessConfig()
    assert prod.uri.startswith("s3://") and prod.sha256 is None
    assert prod.operating_points[prod.default_operating_point].threshold == 0.5
    for entry in m.entries.values():
        assert entry.clinical_use is False, f"{entry.name} must stay 'not for clinical use' in the repository"
    with pytest.raises(ModelUnavailable, match="no sha256"):  # until the operator supplies the hash
        resolve_weights(prod, REPO / "weights")
