"""Evaluation metrics: set scores, Tug-of-War and membership inference attacks."""

from models.metrics.mia import (
    LOSS_MIA_NAME,
    RMIA_NAME,
    MiaResult,
    RmiaResult,
    loss_mia,
    rmia,
    rmia_scores,
)
from models.metrics.scores import (
    ACCURACY_NAME,
    MACRO_MAP_NAME,
    accuracy,
    batch_score_fraction,
    macro_map,
    per_sample_loss,
    task_score,
)
from models.metrics.tow import TOW_NAME, SetScores, tug_of_war

__all__ = [
    "ACCURACY_NAME",
    "LOSS_MIA_NAME",
    "MACRO_MAP_NAME",
    "RMIA_NAME",
    "TOW_NAME",
    "MiaResult",
    "RmiaResult",
    "SetScores",
    "accuracy",
    "batch_score_fraction",
    "loss_mia",
    "macro_map",
    "per_sample_loss",
    "rmia",
    "rmia_scores",
    "task_score",
    "tug_of_war",
]
