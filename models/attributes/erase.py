"""Erase attributes from a network's pre-logit feature: fit LEACE on labelled rows, fold it in."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from models.attributes.audit import model_outputs
from models.attributes.labels import AttributeLabels
from models.attributes.leace import eraser_to_dict, fit_eraser, fold_into_head
from models.data.base import FaceData

METHODS = ("leace", "mi_detach")


def erase_attributes(
    model: nn.Module,
    data: FaceData,
    labels: Sequence[AttributeLabels],
    fit_rows: Sequence[int],
    image_size: int,
    device: torch.device,
) -> dict[str, Any]:
    """Erase every attribute of `labels` jointly from `model`'s head, in place, fitting on the
    pre-logit features of `fit_rows`; returns the record a version keeps (the eraser, counts
    and sizes, no labels). A head that already holds erasers needs `labels` to name their
    attributes too (models/attributes/leace.py says why)."""
    if not labels:
        raise ValueError("no attribute to erase")
    start = time.perf_counter()
    features, _ = model_outputs(model, data, fit_rows, image_size, device)
    rows = np.asarray(fit_rows)
    eraser = fit_eraser(torch.from_numpy(features), [label.coded(rows) for label in labels])
    head = model.get_classifier()  # type: ignore[operator]
    if not isinstance(head, nn.Linear):
        raise ValueError(f"LEACE folds into a Linear head, not {type(head).__name__}")
    fold_into_head(head, eraser)
    return {
        "method": "leace",
        "attributes": [label.name for label in labels],
        "guarantee": "linear",
        "scope": "pre_logits",
        "rank": int(eraser.proj_left.shape[1]),
        "eraser": eraser_to_dict(eraser),
        "fit_images": len(rows),
        "fit_identities": len(set(np.asarray(data.identities, dtype=object)[rows])),
        "class_counts": {
            label.name: np.bincount(label.values[rows], minlength=label.classes).tolist()
            for label in labels
        },
        "seconds": time.perf_counter() - start,
    }
