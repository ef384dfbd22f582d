"""The seed's training recipe as a Lightning module, driven by a YAML config.

- :mod:`ml.train.config`: :class:`TrainConfig` (YAML loading and validation);
- :mod:`ml.train.losses`: focal loss, lesion-attention loss, the IG-path attribution prior;
- :mod:`ml.train.module`: :class:`LitClassifier`, the Lightning module;
- :mod:`ml.train.fit`: one Lightning fit (:func:`fit_once`), k-fold cross-validation, progress lines;
- :mod:`ml.train.scoring`: scoring studies, the calibration temperature, the operating points;
- :mod:`ml.train.publish`: fp16 weights, manifest entry, plots and model card;
- :mod:`ml.train.corpora`: the studies a run reads and the tensor cache's filling;
- :mod:`ml.train.recipe`: :func:`train`, the whole recipe;
- :mod:`ml.train.published`: :func:`evaluate_model` and :func:`retune` on a published model.
"""

from ml.train.config import CALIBRATION_SPLITS, MONITOR_MODES, TrainConfig
from ml.train.corpora import fill_cache_with_progress, refuse_repeated_studies, training_records
from ml.train.fit import ProgressLog, calibrate_frozen_bn, cross_validate, fit_once
from ml.train.losses import FocalLoss, lesion_attention_loss, lesion_cells, path_attribution_loss
from ml.train.module import LitClassifier
from ml.train.publish import publish, publish_entry, write_card
from ml.train.published import evaluate_model, retune
from ml.train.recipe import train
from ml.train.scoring import (
    SPLIT_TITLES,
    calibration_record,
    choose_operating_points,
    labelled_logodds,
    predict_logodds,
    score_records,
    score_splits,
    scoring_device,
)

__all__ = [
    "CALIBRATION_SPLITS",
    "MONITOR_MODES",
    "SPLIT_TITLES",
    "FocalLoss",
    "LitClassifier",
    "ProgressLog",
    "TrainConfig",
    "calibrate_frozen_bn",
    "calibration_record",
    "choose_operating_points",
    "cross_validate",
    "evaluate_model",
    "fill_cache_with_progress",
    "fit_once",
    "labelled_logodds",
    "lesion_attention_loss",
    "lesion_cells",
    "path_attribution_loss",
    "predict_logodds",
    "publish",
    "publish_entry",
    "refuse_repeated_studies",
    "retune",
    "score_records",
    "score_splits",
    "scoring_device",
    "train",
    "training_records",
    "write_card",
]
