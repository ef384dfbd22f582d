"""The runtime model cards, from the weights manifest (read without torch)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import Client, ServicesDep
from app.api.responses import error_responses
from app.schemas import ModelCard, ModelsOut
from ml.model.manifest import Manifest

router = APIRouter(prefix="/v1", tags=["models"])


@router.get(
    "/models",
    response_model=ModelsOut,
    response_model_exclude_unset=True,  # the manifest's blocks as written (app/schemas_models.py)
    summary="Servable models: architecture, preprocessing, operating points, metrics, intended use",
    responses=error_responses("unauthorized"),
)
def list_models(services: ServicesDep, client: Client) -> Any:
    m = services.manifest
    cards = [model_card(m, name, services.models.reason(name)) for name in m.entries]
    return ModelsOut(default=m.default, models=cards).model_dump(mode="json", exclude_unset=True)


def model_card(manifest: Manifest, name: str, unavailable_reason: str | None) -> ModelCard:
    """The card of one manifest entry; its blocks are the manifest's JSON (app/schemas_models.py)."""
    e = manifest.entries[name]
    d = e.to_dict()
    return ModelCard(
        name=name,
        version=e.version,
        default=name == manifest.default,
        arch=e.spec.arch,
        input_size=list(e.input_size),
        preprocess=d["preprocess"],
        operating_points=d["operating_points"],
        default_operating_point=e.default_operating_point,
        calibration=d["calibration"],
        metrics=e.metrics,
        training_data=e.training_data,
        intended_use=e.intended_use,
        clinical_use=e.clinical_use,
        sha256=e.sha256,
        license=e.license,
        notes=e.notes,
        ood=None
        if e.ood is None
        else {k: v for k, v in e.ood.to_dict().items() if k not in ("uri", "sha256")},
        unavailable_reason=unavailable_reason,
        **({"shadow_of": e.shadow_of} if e.shadow_of else {}),
    )
