"""How many attributes macro mAP can read on each forget set of the pretrained preset.

Macro mAP skips an attribute with no positive in the set and scores AP 1 for one positive on every
image, whatever the model; only attributes with both labels among the forget rows can move. Prints
their counts per request size and seed (no model is trained).

    python bench/forget_labels.py
"""

from __future__ import annotations

from models.data.registry import load_dataset
from models.data.splits import make_splits, split_indices
from models.presets import preset_setup


def main() -> None:
    """Print, per (N, seed), the forget images and the attributes that vary, are all 1, or all 0."""
    setup = preset_setup("pretrained", dataset_name="synthfaces", task="attributes")
    data = load_dataset(setup.dataset)
    targets = data.targets["attributes"]
    print("| N | seed | forget images | varying | all positive (AP 1) | no positive (skipped) |")
    print("|---|---|---|---|---|---|")
    for requests in (1, 5, 10):
        for seed in range(5):
            rows = split_indices(data, make_splits(data.identities, data.keys, requests, seed))
            positives = targets[rows.forget].sum(axis=0)
            n = len(rows.forget)
            varying = int(((positives > 0) & (positives < n)).sum())
            full, empty = int((positives == n).sum()), int((positives == 0).sum())
            print(f"| {requests} | {seed} | {n} | {varying} | {full} | {empty} |")


if __name__ == "__main__":
    main()
