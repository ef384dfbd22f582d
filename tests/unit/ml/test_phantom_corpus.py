"""In-memory phantom corpora: the same studies as the written ones, lesion maps, and the
lesion-attention and IG-path losses that train on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ml.data import (
    CTDataset,
    LesionMapDataset,
    PhantomCorpus,
    TensorCache,
    phantom_records,
    read_labels_csv,
)
from ml.io import read_study
from ml.model import ModelSpec
from ml.model.network import build_model, freeze_stages, set_frozen_bn_eval
from ml.phantom import write_corpus
from ml.preprocess import PreprocessConfig
from ml.train import (
    LitClassifier,
    TrainConfig,
    lesion_attention_loss,
    lesion_cells,
    path_attribution_loss,
    train,
)

SMALL = PreprocessConfig(target_size=(32, 32, 32))
SIZES = {"rows": 48, "cols": 48, "pixel_spacing_mm": 8.0, "slice_spacing_mm": 5.0, "difficulty": (0.9, 1.0)}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), 6, seed=31, **SIZES)  # type: ignore[arg-type]


def test_in_memory_corpus_is_the_written_corpus(written: Path, tmp_path: Path) -> None:
    """Same ids and labels, the same tensors, and lesion maps that cover every lesion.

    The tensors agree to the cache's float16 step (≤ 1.6 HU): the DICOM files carry the
    geometry as decimal strings, rounded in the last digits."""
    on_disk = read_labels_csv(written)
    in_memory = phantom_records(PhantomCorpus(seed=31, n=6, **SIZES))  # type: ignore[arg-type]
    assert [(r.study_id, r.label) for r in on_disk] == [(r.study_id, r.label) for r in in_memory]
    cache = TensorCache(tmp_path, SMALL)
    assert cache.fill(in_memory, workers=2) == {}
    assert len({cache.path_for(r) for r in in_memory}) == 6  # one cache entry per study
    lesions = json.loads((written.parent / "lesions.json").read_text())
    for disk, mem in zip(on_disk, in_memory, strict=True):
        assert (cache.get(disk) - cache.get(mem)).abs().max() <= 2e-3
        assert cache.lesions(disk) is None
        lesion_map = cache.lesions(mem)
        assert (
            lesion_map is not None and lesion_map.shape == (1, 32, 32, 32) and lesion_map.dtype == torch.bool
        )
        assert bool(lesion_map.any()) == bool(mem.label)
        if not mem.label:
            continue
        assert disk.zip_path is not None
        prepared = read_study(disk.zip_path, preprocess=SMALL).preprocessed
        assert prepared is not None
        geom = prepared.geometry
        marked = np.argwhere(lesion_map[0].numpy())
        for les in lesions[disk.study_id]:
            if les["kind"] == "effusion":  # a crescent: its centre may lie outside it
                continue
            centre = geom.lps_to_model(np.asarray(les["centre_lps_mm"], dtype=np.float64)[None])[0]
            assert np.abs(marked - centre).max(axis=1).min() <= 1.0, (disk.study_id, les)


def test_lesion_maps_follow_the_augmentation(tmp_path: Path) -> None:
    recs = phantom_records(PhantomCorpus(seed=32, n=4, **SIZES))  # type: ignore[arg-type]
    cache = TensorCache(tmp_path, SMALL)
    ds = CTDataset(recs, cache, augment=True, shift=4)
    t = torch.where(torch.rand(1, 32, 32, 32) > 0.9, 1.0, -1.0)
    torch.manual_seed(3)
    for _ in range(20):
        ta, ma = ds.augmented(t.clone(), t > 0)
        assert ma is not None and torch.equal(ma, ta > 0)  # flipped and shifted alike
    items = LesionMapDataset(CTDataset(recs, cache))
    for i, r in enumerate(recs):
        x, y, m = items[i]
        assert y == r.label and m.shape == x.shape and bool(m.any()) == bool(r.label)


def test_lesion_attention_loss_rewards_evidence_on_the_lesion() -> None:
    fc = torch.tensor([[0.0, 0.0], [1.0, 0.0]])  # margin weight: channel 0
    lesions = torch.zeros(2, 1, 16, 16, 16, dtype=torch.bool)
    lesions[:, :, 1:3, 1:3, 1:3] = True  # the centre of feature cell (0, 0, 0) at 4³
    y = torch.tensor([1, 1])
    on = torch.zeros(2, 2, 4, 4, 4)
    on[:, 0, 0, 0, 0] = 10.0
    off = torch.zeros(2, 2, 4, 4, 4)
    off[:, 0, 3, 3, 3] = 10.0
    loss_on, loss_off = lesion_attention_loss(on, fc, lesions, y), lesion_attention_loss(off, fc, lesions, y)
    assert loss_on is not None and loss_off is not None
    assert float(loss_on) < 0.01  # e¹⁰ against 63 cells of e⁰
    assert float(loss_off) > 9.0
    # uniform evidence: −log(1/64)
    flat = lesion_attention_loss(torch.ones(2, 2, 4, 4, 4), fc, lesions, y)
    assert flat is not None and float(flat) == pytest.approx(np.log(64), rel=1e-5)
    # a constant added to the evidence map changes nothing; channel 1 is not evidence
    shifted = off.clone()
    shifted[:, 0] += 2.0
    shifted[:, 1] += 7.0
    assert float(lesion_attention_loss(shifted, fc, lesions, y)) == pytest.approx(float(loss_off), rel=1e-5)  # type: ignore[arg-type]
    # no positive study with a map in the batch: no loss
    assert lesion_attention_loss(on, fc, lesions, torch.tensor([0, 0])) is None
    assert lesion_attention_loss(on, fc, torch.zeros_like(lesions), y) is None


def test_lesion_cells_are_those_whose_upsampled_peak_lands_on_the_lesion() -> None:
    # 16³ input, 2³ grid: cell centres at input voxel 3.5 (voxels 3 and 4) and 11.5 (11, 12)
    lesions = torch.zeros(3, 1, 16, 16, 16, dtype=torch.bool)
    lesions[0, 0, 11:13, 3:5, 3:5] = True  # on the centre of cell (1, 0, 0)
    lesions[0, 0, 0, 0, 15] = True  # a corner voxel of cell (0, 0, 1): far from its centre
    lesions[1, 0, 0, 0, 15] = True  # only that corner: no centre reached, so its cell counts
    lesions[2, 0, 2, 2, 2] = True  # one voxel from the centre's neighbours of cell (0, 0, 0)
    cells = lesion_cells(lesions, (2, 2, 2)).view(3, 2, 2, 2)
    assert cells[0].nonzero().tolist() == [[1, 0, 0]]
    assert cells[1].nonzero().tolist() == [[0, 0, 1]]
    assert cells[2].nonzero().tolist() == [[0, 0, 0]]
    assert not lesion_cells(torch.zeros(1, 1, 16, 16, 16, dtype=torch.bool), (2, 2, 2)).any()


class _LinearMargin(nn.Module):
    """Logits (0, Σ w·x): the margin's input gradient is ``w`` wherever on the path."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = (x * self.w).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(margin), margin], dim=1)


def _value(loss: torch.Tensor | None) -> float:
    assert loss is not None
    return float(loss.detach())


def test_path_attribution_loss_is_the_softmax_share_of_the_ig_peak_near_the_lesion() -> None:
    w = torch.full((1, 1, 8, 8, 8), 0.1)
    w[0, 0, 2, 2, 2] = 1.0  # the attribution's peak (x + 1 = 1 everywhere)
    x = torch.zeros(3, 1, 8, 8, 8)
    lesions = torch.zeros(3, 1, 8, 8, 8, dtype=torch.bool)
    lesions[0, 0, 2, 2, 2] = True  # on the peak
    lesions[1, 0, 6, 6, 6] = True  # far from it
    lesions[2, 0, 3, 3, 3] = True  # one voxel (diagonally) from it: still a hit
    y = torch.tensor([1, 1, 1])
    model = _LinearMargin(w)
    e = np.e
    # the peak is worth e^10 (temperature 10), each of the other 511 voxels e^(10·0.1)
    on = np.log(e**10 + 511 * e) - np.log(e**10 + 26 * e)  # 3³ voxels near the lesion
    off = np.log(e**10 + 511 * e) - np.log(27 * e)
    got = [_value(path_attribution_loss(model, x[i : i + 1], lesions[i : i + 1], y[:1])) for i in range(3)]
    assert got == pytest.approx([on, off, on], rel=1e-5)
    assert _value(path_attribution_loss(model, x, lesions, y)) == pytest.approx((2 * on + off) / 3, rel=1e-5)
    # only the first max_studies positives count; normals and empty maps never
    first = path_attribution_loss(model, x[1:], lesions[1:], y[1:], max_studies=1)
    assert _value(first) == pytest.approx(off)
    assert path_attribution_loss(model, x, lesions, torch.tensor([0, 0, 0])) is None
    assert path_attribution_loss(model, x, torch.zeros_like(lesions), y) is None
    # evidence against pathology is not evidence: a negative peak leaves the rest uniform
    neg = _LinearMargin(torch.where(w == 1.0, -1.0, 0.1))
    against = path_attribution_loss(neg, x[:1], lesions[:1], y[:1])
    assert _value(against) == pytest.approx(np.log(511 / 26), rel=1e-4)
    # a sharper temperature weighs the peak more
    assert _value(path_attribution_loss(model, x[1:2], lesions[1:2], y[:1], temperature=20.0)) > off
    # (x + 1) weighs the gradient: air (x = -1) carries no attribution at all
    air = x[:1].clone()
    air[0, 0, 2, 2, 2] = -1.0
    # (the peak gone, the rest's 0.1 is the new maximum)
    moved = _value(path_attribution_loss(model, air, lesions[:1], y[:1]))
    assert moved == pytest.approx(np.log(511 * e**10 + 1) - np.log(26 * e**10 + 1), rel=1e-5)


def test_path_attribution_loss_trains_the_model_without_touching_its_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="resnet10", widths=(4, 8, 8, 8), dilated=True))
    freeze_stages(model, ["stem"])
    model.train()
    set_frozen_bn_eval(model)
    modes = {name: m.training for name, m in model.named_modules()}
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    x = torch.rand(2, 1, 16, 16, 16) * 2 - 1
    lesions = torch.zeros(2, 1, 16, 16, 16, dtype=torch.bool)
    lesions[:, :, 4:8, 4:8, 4:8] = True
    loss = path_attribution_loss(model, x, lesions, torch.tensor([1, 0]), alpha=torch.tensor([0.5, 0.5]))
    assert loss is not None and torch.isfinite(loss) and _value(loss) > 0
    loss.backward()
    # the gradient of the gradient reaches the trainable stages, not the frozen stem
    assert model.layer4[0].conv1.weight.grad is not None and model.layer4[0].conv1.weight.grad.abs().sum() > 0
    assert model.conv1.weight.grad is None
    assert {name: m.training for name, m in model.named_modules()} == modes
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert all(torch.equal(stats[k], after[k]) for k in stats)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_validation_scores_the_same_ig_path_points_every_epoch() -> None:
    """(outside a Trainer: ``self.log`` only warns)"""
    spec = ModelSpec(arch="resnet10", widths=(4, 8, 8, 8), dilated=True).to_dict()
    lit = LitClassifier(spec, ["stem"], ig_weight=1.0, ig_studies=2)
    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 16, 16) * 2 - 1
    lesions = torch.zeros(2, 1, 16, 16, 16, dtype=torch.bool)
    lesions[:, :, 4:8, 4:8, 4:8] = True
    batch = [x, torch.tensor([1, 1]), lesions]
    lit.eval()
    with torch.no_grad():
        rng = torch.get_rng_state()
        first = [float(lit._objective(batch, "val", i)[1]) for i in (3, 3, 4)]
        assert torch.equal(torch.get_rng_state(), rng)  # validation leaves training's RNG alone
        # the same batch index draws the same path points; another index others
        assert first[0] == first[1] and first[0] != first[2]
        # training draws fresh points from the global RNG
        lit.train()
        train_losses = {float(lit._objective(batch, "train")[1]) for _ in range(2)}
    assert len(train_losses) == 2 and not torch.equal(torch.get_rng_state(), rng)


def test_training_on_an_in_memory_corpus_with_the_lesion_and_ig_losses(tmp_path: Path) -> None:
    cfg = TrainConfig.from_dict(
        {
            "phantom_corpora": [{"seed": 33, "n": 8, **SIZES, "difficulty": [0.9, 1.0]}],
            "cache_dir": str(tmp_path / "cache"),
            "output_dir": str(tmp_path / "run"),
            "preprocess": {"target_size": [32, 32, 32]},
            # dilated: a 4³ feature map at 32³ (the plain layout's 1³ would make the loss 0)
            "model": {"arch": "resnet10", "widths": [8, 16, 32, 64], "dilated": True},
            "batch_size": 2,
            "max_epochs": 2,
            "val_fraction": 0.25,
            "preprocess_workers": 1,
            "lesion_weight": 0.5,
            "ig_weight": 0.2,
            "ig_studies": 1,
            "monitor": "val_loss",
            "freeze": ["stem"],
        }
    )
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    summary = train(cfg)
    assert summary["data"]["train_val"] == {"n": 8, "positives": 4, "negatives": 4}
    assert summary["fit"]["global_step"] == 2 * 3  # 6 training studies, batches of 2
    metrics = summary["fit"]["last_epoch_metrics"]
    assert metrics["train_lesion"] > 0 and metrics["train_loss"] > metrics["train_focal"]
    # validation studies carry their lesion maps too, and the objective on them picks the epoch
    assert metrics["val_lesion"] > 0
    # and the IG term (one positive per batch) in training and in validation
    assert metrics["train_ig"] > 0 and metrics["val_ig"] > 0
    objective = metrics["val_focal"] + 0.5 * metrics["val_lesion"] + 0.2 * metrics["val_ig"]
    assert metrics["val_loss"] == pytest.approx(objective, rel=1e-3)
    fit = summary["fit"]
    # (the logged metrics are rounded to 5 places)
    assert fit["monitor"] == "val_loss" and fit["best_score"] <= metrics["val_loss"] + 1e-4
    assert Path(fit["best_checkpoint"]).name.endswith(f"val_loss={fit['best_score']:.4f}.ckpt")
    for bad in ({"ig_weight": -1.0}, {"ig_studies": 0}, {"ig_temperature": 0.0}):
        with pytest.raises(ValueError, match="ig_weight must be"):
            TrainConfig.from_dict({**cfg.to_dict(), **bad})
    with pytest.raises(ValueError, match="monitor must be one of"):
        TrainConfig.from_dict({**cfg.to_dict(), "monitor": "val_auc"})
    with pytest.raises(ValueError, match="no training data"):
        train(TrainConfig(cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "empty")))
