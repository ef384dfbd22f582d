"""Manifest entries with ``shadow_of``: the primary exists, no chains, same input, never the default."""

from __future__ import annotations

import json
import uuid

import pytest

from app.config import DEFAULT_MANIFEST
from app.worker.shadow import in_share
from ml.model import Manifest


def _with(**entries: dict[str, object]) -> dict[str, object]:
    raw = json.loads(DEFAULT_MANIFEST.read_text())
    demo = raw["models"][raw["default"]]
    for name, extra in entries.items():
        raw["models"][name] = {**demo, "name": name, **extra}
    return dict(raw)


def test_a_shadow_round_trips_and_is_listed_under_its_primary() -> None:
    raw = _with(shadow={"shadow_of": "resnet10-demo"})
    m = Manifest.from_dict(raw)
    assert m.entries["shadow"].shadow_of == "resnet10-demo"
    assert [e.name for e in m.shadows_of("resnet10-demo")] == ["shadow"]
    assert Manifest.from_dict(m.to_dict()).entries["shadow"].shadow_of == "resnet10-demo"
    assert "shadow_of" not in m.entries["resnet10-demo"].to_dict()  # other entries are unchanged


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"shadow": {"shadow_of": "nowhere"}}, "not in the manifest"),
        ({"shadow": {"shadow_of": "shadow"}}, "cannot shadow itself"),
        ({"a": {"shadow_of": "resnet10-demo"}, "b": {"shadow_of": "a"}}, "no chains"),
        ({"shadow": {"shadow_of": "resnet10-demo", "input_size": [64, 64, 64]}}, "input"),
    ],
)
def test_invalid_shadows_are_refused(entries: dict[str, dict[str, object]], message: str) -> None:
    raw = _with(**entries)
    if "input_size" in entries.get("shadow", {}):
        pre = dict(raw["models"]["shadow"]["preprocess"])  # type: ignore[index]
        raw["models"]["shadow"]["preprocess"] = {**pre, "target_size": [64, 64, 64]}  # type: ignore[index]
    with pytest.raises(ValueError, match=message):
        Manifest.from_dict(raw)


def test_a_shadow_cannot_be_the_default() -> None:
    m = Manifest.from_dict(_with(shadow={"shadow_of": "resnet10-demo"}))
    with pytest.raises(ValueError, match="default"):
        Manifest(entries=m.entries, default="shadow")


def test_the_share_is_deterministic_and_near_its_value() -> None:
    ids = [uuid.UUID(int=i * 7919 + 13) for i in range(4000)]
    picked = [in_share(j, 0.25) for j in ids]
    assert picked == [in_share(j, 0.25) for j in ids]  # every attempt of a job agrees
    assert 0.22 < sum(picked) / len(ids) < 0.28
    assert all(in_share(j, 1.0) for j in ids[:50]) and not any(in_share(j, 0.0) for j in ids[:50])
    # a larger share keeps the jobs of a smaller one
    assert all(in_share(j, 0.5) for j, p in zip(ids, picked, strict=True) if p)
