"""The runtime model cards, from the weights manifest (read without torch)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import Client, ServicesDep
from app.api.responses import error_responses
from app.schemas import ModelCard, ModelsOut

router = APIRouter(prefix="/v1", tags=["models"])


@router.get(
    "/models",
    response_model=ModelsOut,
    summary="Servable models: architecture, preprocessing, operating points, metrics, intended use",
    responses=error_responses("unauthorized"),
)
def list_models(services: ServicesDep, client: Client) -> Any:
    m = services.manifest
    cards = []
    for name, e in m.entries.items():
        d = e.to_dict()
        cards.append(
            ModelCard(
                name=name,
                version=e.version,
                default=name == m.default,
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
                unavailable_reason=services.models.reason(name),
                shadow_of=e.shadow_of,
            )
        )
    return ModelsOut(default=m.default, models=cards).model_dump(mode="json")
