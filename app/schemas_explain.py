"""The explanation parameters of a request, typed per method (docs/architecture.md §3.6).

The models below are the OpenAPI description of ``explain_params`` (``POST /v1/jobs``,
``POST /v1/studies/{id}/predict``, ``POST /v1/studies/import``) and ``params``
(``POST /v1/jobs/{id}/explain``): one object per saliency method, each with the
parameters a request may set, their bounds and choices, and no other key. They mirror
:data:`ml.explain.METHODS` (tests/unit/app/test_schemas_explain_types.py compares them).

The value itself is checked by :func:`~app.schemas.check_explain_params` against that
table for the method the request names (the same rules as the worker's, with a message
naming the method, the parameter and the rule; 422 ``validation_error``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator

__all__ = [
    "ExplainParams",
    "ExplainParamsIn",
    "GradCamParams",
    "IntegratedGradientsParams",
    "OcclusionParams",
    "ParamValue",
    "SaliencyParams",
]

NiftiEncoding = Literal["uint8", "float32"]
_NIFTI_DOC = 'how the NIfTI stores the map: "uint8" (8 bits with scl_slope, default) or "float32" (exact)'
_SMOOTH_DOC = "σ of a Gaussian blur of the map (model voxels); 0 = raw"


class GradCamParams(BaseModel):
    """``gradcam``: Grad-CAM of the last ResNet stage."""

    model_config = ConfigDict(extra="forbid", title="GradCamParams")
    nifti: NiftiEncoding = Field("uint8", description=_NIFTI_DOC)


class IntegratedGradientsParams(BaseModel):
    """``integrated_gradients``: Integrated Gradients from a baseline volume."""

    model_config = ConfigDict(extra="forbid", title="IntegratedGradientsParams")
    steps: int = Field(32, ge=1, le=256, description="integration steps (forward and backward passes)")
    internal_batch_size: int = Field(4, ge=1, le=64, description="volumes per pass (memory)")
    baseline: Literal["black", "body_mean"] = Field("black", description="black = air")
    smooth_voxels: float = Field(3.0, ge=0.0, le=8.0, description=_SMOOTH_DOC)
    nifti: NiftiEncoding = Field("uint8", description=_NIFTI_DOC)


class SaliencyParams(BaseModel):
    """``saliency``: absolute gradient of the score with respect to the input voxels."""

    model_config = ConfigDict(extra="forbid", title="SaliencyParams")
    smooth_voxels: float = Field(0.0, ge=0.0, le=8.0, description=_SMOOTH_DOC)
    nifti: NiftiEncoding = Field("uint8", description=_NIFTI_DOC)


class OcclusionParams(BaseModel):
    """``occlusion``: score drop when cubic patches are replaced by air (sliding window)."""

    model_config = ConfigDict(extra="forbid", title="OcclusionParams")
    window: int | None = Field(
        None, ge=2, le=64, description="cube side (model voxels); null: 1/8 of the input, non-overlapping"
    )
    stride: int | None = Field(None, ge=1, le=64, description="model voxels ≤ window; null: the window")
    nifti: NiftiEncoding = Field("uint8", description=_NIFTI_DOC)


#: the per-method request models, by method name
PARAMS_MODELS: dict[str, type[BaseModel]] = {
    "gradcam": GradCamParams,
    "integrated_gradients": IntegratedGradientsParams,
    "saliency": SaliencyParams,
    "occlusion": OcclusionParams,
}

#: one resolved parameter value (stored with an explanation): a number, a choice, an
#: occlusion window or stride per axis (D, H, W voxels), or null
ParamValue = int | float | str | list[int] | None
#: the parameters of an explanation as the worker ran them (defaults filled in)
ExplainParams = dict[str, ParamValue]


def _object(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise ValueError("must be a JSON object of the method's parameters")
    return dict(v)


#: ``explain_params``/``params`` of a request: a JSON object of the method's parameters, described
#: by the per-method models; its values are checked for the method by ``check_explain_params``
ExplainParamsIn = Annotated[
    dict[str, Any],
    PlainValidator(
        _object,
        json_schema_input_type=GradCamParams | IntegratedGradientsParams | SaliencyParams | OcclusionParams,
    ),
]
