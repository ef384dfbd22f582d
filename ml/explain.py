"""Saliency for a :class:`~ml.inference.Predictor` (Captum).

For now only :func:`gradcam_peak`, which feeds the ``--explain`` column of the
batch report; full saliency volumes mapped back to the source geometry come
later in this module.

DESIGN rule 8: gradients are enabled only inside these functions, the model
stays in eval mode throughout, and no gradient is left on the parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ml.inference import Predictor

__all__ = ["gradcam_map", "gradcam_peak"]


def gradcam_map(predictor: Predictor, tensor: torch.Tensor, target: int | None = None) -> torch.Tensor:
    """Grad-CAM of ``model.layer4`` for the pathology class, upsampled to the input size.

    Args:
        predictor: the loaded model.
        tensor: one preprocessed volume [1, 1, D, H, W] (or [B, 1, D, H, W]).
        target: class index; default the pathology class (1, or 0 for a 1-logit head).

    Returns:
        float32 CPU tensor [B, D, H, W], ReLU-ed (only positive evidence),
        trilinear upsampling (align_corners=False) of the layer4 map.
    """
    from captum.attr import LayerGradCam  # type: ignore[import-untyped,unused-ignore]

    predictor.check_batch(tensor)
    model = predictor.model
    was_training = model.training
    model.eval()
    if target is None:
        target = 1 if model.fc.out_features > 1 else 0
    x = tensor.to(predictor.device, dtype=torch.float32).contiguous(memory_format=torch.channels_last_3d)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = x.clone().requires_grad_(True)
            cam = LayerGradCam(model, model.layer4)
            attr = cam.attribute(x, target=target, relu_attributions=True)
            up = F.interpolate(
                attr.detach().float(), size=predictor.input_size, mode="trilinear", align_corners=False
            )
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return up[:, 0].contiguous().cpu()


def gradcam_peak(predictor: Predictor, tensor: torch.Tensor) -> tuple[tuple[int, int, int], float]:
    """Voxel (z, y, x) of the model input with the highest Grad-CAM value, and that value.

    ``tensor`` is one preprocessed volume [1, 1, D, H, W]. Map the voxel to LPS
    mm with :meth:`ml.preprocess.PreprocessGeometry.model_to_lps`. A map that is
    zero everywhere (no positive evidence) gives voxel (0, 0, 0) and 0.0.
    """
    if tensor.shape[0] != 1:
        raise ValueError(f"gradcam_peak takes one volume [1, 1, D, H, W], got {list(tensor.shape)}")
    cam = gradcam_map(predictor, tensor)[0]
    flat = int(torch.argmax(cam).item())
    _, h, w = cam.shape
    z, rem = divmod(flat, h * w)
    y, xx = divmod(rem, w)
    return (z, y, xx), float(cam[z, y, xx].item())
