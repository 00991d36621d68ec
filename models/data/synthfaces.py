"""synthfaces: a procedural face data set, deterministic from a seed, with identities to memorize.

Each identity has persistent traits (face shape, skin tone, hair, eyes, nose, mouth, eyeglasses
habit, age, a few moles) and each photo varies in pose, scale, rotation, lighting, background,
expression and noise. Labels follow CelebA's attribute names and MUFAC's age groups. Like real
annotations, each identity carries a few consistent label quirks (an annotator who always marks
this person's hair as brown, or guesses their age one group off), so a model that trained on an
identity scores better on it than a model that never saw it: the gap unlearning has to close.

Traits and views are sampled in models/data/synthfaces_traits.py and drawn by
models/data/synthfaces_render.py; this module generates the data set from them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from models.data.base import AGE_GROUPS, FaceData, TaskSpec, age_group
from models.data.synthfaces_render import render
from models.data.synthfaces_traits import (
    ATTRIBUTES,
    Traits,
    View,
    sample_traits,
    sample_view,
    true_attributes,
)


@dataclass(frozen=True)
class SynthFacesConfig:
    """Size and seed of a synthfaces data set; equal configs give identical data."""

    num_identities: int = 400
    image_size: int = 64
    seed: int = 0
    min_images: int = 2
    max_images: int = 30
    quirk_rate: float = 0.12
    age_quirk_rate: float = 0.3
    label_noise: float = 0.01


def _images_per_identity(rng: np.random.Generator, cfg: SynthFacesConfig) -> np.ndarray:
    """Uneven image counts in [min_images, max_images], long-tailed like CelebA's."""
    counts = np.clip(
        np.round(rng.lognormal(mean=1.75, sigma=0.6, size=cfg.num_identities)),
        cfg.min_images,
        cfg.max_images,
    )
    # Always include both extremes so the tails the protocol must handle are present.
    counts[0], counts[-1] = cfg.min_images, cfg.max_images
    return rng.permutation(counts.astype(int))


def identity_name(index: int) -> str:
    """The identity ID of the `index`-th synthfaces person."""
    return f"sf{index:04d}"


class SynthFaces:
    """Generator for one synthfaces configuration: the data set and extra portraits."""

    def __init__(self, cfg: SynthFacesConfig | None = None) -> None:
        self.cfg = cfg or SynthFacesConfig()
        counts_rng = np.random.default_rng([self.cfg.seed, 0])
        self.counts = _images_per_identity(counts_rng, self.cfg)
        self.identities = [identity_name(i) for i in range(self.cfg.num_identities)]

    def traits(self, index: int) -> Traits:
        """The persistent traits of identity number `index`."""
        rng = np.random.default_rng([self.cfg.seed, 1, index])
        return sample_traits(rng, self.cfg.quirk_rate, self.cfg.age_quirk_rate)

    def _index(self, identity: str) -> int:
        try:
            return self.identities.index(identity)
        except ValueError:
            raise KeyError(f"synthfaces has no identity {identity!r}") from None

    def portrait(self, identity: str, index: int = 0) -> torch.Tensor:
        """A new photo of `identity` under shifted light, background and pose (uint8, 3×H×W)."""
        i = self._index(identity)
        traits = self.traits(i)
        view = sample_view(
            np.random.default_rng([self.cfg.seed, 3, i, index]), traits, portrait=True
        )
        return render(traits, view, self.cfg.image_size)

    def generate(self) -> FaceData:
        """Render every photo and its labels."""
        cfg = self.cfg
        images, keys, identities, attrs, ages = [], [], [], [], []
        for i, count in enumerate(self.counts):
            traits = self.traits(i)
            for k in range(int(count)):
                rng = np.random.default_rng([cfg.seed, 2, i, k])
                view = sample_view(rng, traits)
                images.append(render(traits, view, cfg.image_size))
                keys.append(f"{identity_name(i)}/{k:02d}")
                identities.append(identity_name(i))
                attrs.append(self._annotate(rng, traits, view))
                ages.append(self._annotate_age(rng, traits, view))
        stack = torch.stack(images)
        tasks = {
            "attributes": TaskSpec("attributes", "multilabel", ATTRIBUTES),
            "age": TaskSpec("age", "multiclass", tuple(g[0] for g in AGE_GROUPS)),
        }
        return FaceData(
            name="synthfaces",
            keys=keys,
            identities=identities,
            tasks=tasks,
            targets={
                "attributes": np.asarray(attrs, np.float32),
                "age": np.asarray(ages, np.int64),
            },
            load_image=stack.__getitem__,
            meta={"config": asdict(cfg), "images": stack},
        )

    def _annotate(self, rng: np.random.Generator, traits: Traits, view: View) -> list[float]:
        truth = true_attributes(traits, view)
        labels = []
        for name in ATTRIBUTES:
            value = (
                truth[name] ^ (name in traits.quirks) ^ bool(rng.random() < self.cfg.label_noise)
            )
            labels.append(float(value))
        return labels

    def _annotate_age(self, rng: np.random.Generator, traits: Traits, view: View) -> int:
        group = age_group(max(0.0, traits.age + view.age_offset)) + traits.age_quirk
        if rng.random() < self.cfg.label_noise:
            group += int(rng.choice([-1, 1]))
        return int(np.clip(group, 0, len(AGE_GROUPS) - 1))


def load_synthfaces(cfg: SynthFacesConfig | None = None) -> FaceData:
    """Generate the synthfaces data set for `cfg` (the default: 240 identities at 64×64)."""
    return SynthFaces(cfg).generate()
