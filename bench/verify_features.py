"""Can a model's own features tell whether a portrait shows the identity a request names?

Issue 13 wants each portrait checked against its identity before an erasure, at a false-accept
rate ≤ 1 % and false-reject rate ≤ 5 %. This probe measures candidate embeddings on a trained
checkpoint's synthfaces data. A reference is the mean embedding of each train identity's
training photos, as onboarding could store it while the data exists. The test is three new
portraits per identity (`SynthFaces.portrait`: new light, background and pose). Each candidate
is reduced by PCA (128) then LDA, both fitted on the training photos' identities. For each
feature it prints the false-reject rate at the threshold that lets 1 % of impostor pairs through,
and rank-1 identification among all train identities.

    lethe train --preset pretrained --dataset synthfaces --requests 5 --seed 0 --out runs/v.pth
    python bench/verify_features.py runs/v.pth
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from models.data.registry import DatasetSpec, load_dataset
from models.data.splits import Splits, split_indices
from models.data.synthfaces import SynthFaces, SynthFacesConfig
from models.data.transforms import test_transform
from models.nets.factory import data_config
from models.protocol import model_from_checkpoint
from models.train.checkpoint import load_checkpoint

PORTRAITS = 3  # new photos per identity
FAR = 0.01


@torch.no_grad()
def embeddings(model: torch.nn.Module, inputs: torch.Tensor) -> dict[str, np.ndarray]:
    """Per candidate: each block's pooled output, the pre-logit feature and 8×8 pixels."""
    net = getattr(model, "network", model)
    found: dict[str, list[torch.Tensor]] = {}
    for batch in inputs.split(64):
        hidden = net.bn1(net.conv_stem(batch))
        for k, block in enumerate(net.blocks):
            hidden = block(hidden)
            found.setdefault(f"block {k}", []).append(hidden.mean((2, 3)))
        pooled = model.forward_head(model.forward_features(batch), pre_logits=True)
        found.setdefault("pre-logit (what the head reads)", []).append(pooled)
        pixels = torch.nn.functional.adaptive_avg_pool2d(batch, 8).flatten(1)
        found.setdefault("pixels 8×8", []).append(pixels)
    return {name: torch.cat(parts).numpy() for name, parts in found.items()}


def verify(
    train: np.ndarray, labels: np.ndarray, probes: np.ndarray, owner: np.ndarray
) -> tuple[float, float]:
    """False-reject rate at FAR and rank-1 rate, with PCA + LDA fitted on `train`."""
    pca = PCA(n_components=min(128, train.shape[1])).fit(train)
    lda = LinearDiscriminantAnalysis(solver="svd").fit(pca.transform(train), labels)

    def unit(rows: np.ndarray) -> np.ndarray:
        z = lda.transform(pca.transform(rows))
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    z = unit(train)
    refs = np.stack([z[labels == k].mean(0) for k in range(labels.max() + 1)])
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    scores = unit(probes) @ refs.T
    rows = np.arange(len(scores))
    genuine = scores[rows, owner]
    others = np.ones_like(scores, dtype=bool)
    others[rows, owner] = False
    threshold = np.quantile(scores[others], 1 - FAR)
    return float((genuine < threshold).mean()), float((scores.argmax(1) == owner).mean())


def main() -> None:
    """Print one table row per candidate embedding."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(checkpoint)
    transform = test_transform(data_config(model, int(checkpoint.config["image_size"])))
    spec = checkpoint.config["dataset"]
    data = load_dataset(DatasetSpec(**spec))
    train_rows = split_indices(data, Splits.from_dict(checkpoint.splits)).train
    identities = sorted({data.identities[r] for r in train_rows})
    number = {identity: k for k, identity in enumerate(identities)}
    labels = np.array([number[data.identities[r]] for r in train_rows])
    sizes = {"num_identities": spec["num_identities"]} if spec.get("num_identities") else {}
    faces = SynthFaces(SynthFacesConfig(image_size=spec["image_size"], seed=spec["seed"], **sizes))
    portraits = [faces.portrait(i, k) for i in identities for k in range(PORTRAITS)]
    owner = np.repeat(np.arange(len(identities)), PORTRAITS)

    train = embeddings(model, torch.stack([transform(data.load_image(r)) for r in train_rows]))
    probes = embeddings(model, torch.stack([transform(p) for p in portraits]))
    print(f"{len(identities)} train identities, {len(train_rows)} training photos, "
          f"{len(portraits)} new portraits")  # fmt: skip
    print(f"| embedding | dims | false rejects at {FAR:.0%} false accepts | rank-1 |")
    print("|---|---|---|---|")
    for name in train:
        frr, rank1 = verify(train[name], labels, probes[name], owner)
        print(f"| {name} | {train[name].shape[1]} | {frr:.1%} | {rank1:.1%} |")


if __name__ == "__main__":
    main()
