"""synthfaces people and photos: sampled identity traits, per-photo views, what a photo shows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ATTRIBUTES: tuple[str, ...] = (
    "Bald",
    "Bangs",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Brown_Hair",
    "Eyeglasses",
    "Gray_Hair",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Oval_Face",
    "Pale_Skin",
    "Smiling",
    "Wavy_Hair",
    "Wearing_Hat",
    "Young",
)
# Attributes that depend on the photo, not the person; quirks only touch the others.
PER_IMAGE_ATTRIBUTES = frozenset({"Eyeglasses", "Mouth_Slightly_Open", "Smiling", "Wearing_Hat"})

EYE_COLORS = ((60, 40, 25), (40, 90, 150), (70, 120, 70), (110, 80, 40), (30, 30, 30))


@dataclass(frozen=True)
class Traits:
    """The persistent look and annotation quirks of one identity."""

    male: bool
    age: float
    face_width: float
    face_ratio: float
    skin: tuple[int, int, int]
    skin_tone: float
    hair_style: str
    hair_color: str
    bangs: bool
    eye_color: tuple[int, int, int]
    eye_size: float
    eye_spacing: float
    nose_size: float
    mouth_width: float
    brow_thickness: int
    mustache: bool
    glasses_habit: float
    glasses_round: bool
    glasses_color: tuple[int, int, int]
    hat_habit: float
    smile_habit: float
    moles: tuple[tuple[float, float, float], ...]
    quirks: tuple[str, ...]
    age_quirk: int


@dataclass(frozen=True)
class View:
    """One photo's conditions: pose, framing, light, background, expression and accessories."""

    yaw: float
    pitch: float
    roll: float
    scale: float
    shift: tuple[float, float]
    light_angle: float
    light_strength: float
    brightness: float
    tint: tuple[float, float, float]
    background: tuple[tuple[int, int, int], tuple[int, int, int]]
    background_pattern: str
    smile: float
    mouth_open: bool
    glasses: bool
    hat: bool
    hat_color: tuple[int, int, int]
    shirt: tuple[int, int, int]
    noise: float
    noise_seed: int
    age_offset: float


def _rgb(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    r, g, b = rng.integers(low, high, size=3)
    return int(r), int(g), int(b)


def sample_traits(rng: np.random.Generator, quirk_rate: float, age_quirk_rate: float) -> Traits:
    """Draw one identity's traits and annotation quirks."""
    male = bool(rng.random() < 0.5)
    age = float(rng.uniform(2, 80))
    skin_tone = float(rng.beta(2.0, 2.0))
    # Skin goes from pale (tone 0) to dark (tone 1) with a slight per-person hue.
    base = np.array([250, 222, 205]) * (1 - skin_tone) + np.array([95, 60, 40]) * skin_tone
    skin = tuple(int(np.clip(c + rng.normal(0, 8), 0, 255)) for c in base)
    gray_p = float(np.clip((age - 40) / 35, 0, 0.9))
    hair_color = (
        "gray"
        if rng.random() < gray_p
        else str(rng.choice(["black", "brown", "blond", "red"], p=[0.38, 0.34, 0.2, 0.08]))
    )
    bald_p = 0.45 * float(np.clip((age - 30) / 45, 0, 1)) if male else 0.0
    if rng.random() < bald_p:
        hair_style = "bald"
    else:
        styles, weights = (
            ["short", "long", "wavy"],
            ([0.6, 0.15, 0.25] if male else [0.2, 0.45, 0.35]),
        )
        hair_style = str(rng.choice(styles, p=weights))
    glasses_habit = float(rng.choice([0.0, 0.05, 0.5, 0.95], p=[0.55, 0.15, 0.1, 0.2]))
    moles = tuple(
        (
            float(rng.uniform(-0.7, 0.7)),
            float(rng.uniform(-0.6, 0.7)),
            float(rng.uniform(0.02, 0.05)),
        )
        for _ in range(int(rng.integers(1, 4)))
    )
    quirk_pool = [a for a in ATTRIBUTES if a not in PER_IMAGE_ATTRIBUTES]
    quirks = tuple(a for a in quirk_pool if rng.random() < quirk_rate)
    age_quirk = int(rng.choice([-1, 1])) if rng.random() < age_quirk_rate else 0
    return Traits(
        male=male,
        age=age,
        face_width=float(rng.uniform(0.85, 1.15)) * (1.08 if male else 1.0),
        face_ratio=float(rng.uniform(1.1, 1.55)),
        skin=skin,  # type: ignore[arg-type]
        skin_tone=skin_tone,
        hair_style=hair_style,
        hair_color=hair_color,
        bangs=bool(hair_style != "bald" and rng.random() < 0.3),
        eye_color=EYE_COLORS[int(rng.integers(len(EYE_COLORS)))],
        eye_size=float(rng.uniform(0.75, 1.3)),
        eye_spacing=float(rng.uniform(0.85, 1.15)),
        nose_size=float(rng.uniform(0.6, 1.6)),
        mouth_width=float(rng.uniform(0.8, 1.25)),
        brow_thickness=int(rng.integers(1, 4)) + (1 if male else 0),
        mustache=bool(male and age > 16 and rng.random() < 0.35),
        glasses_habit=glasses_habit,
        glasses_round=bool(rng.random() < 0.5),
        glasses_color=_rgb(rng, 0, 120),
        hat_habit=float(rng.choice([0.0, 0.15, 0.6], p=[0.7, 0.2, 0.1])),
        smile_habit=float(rng.uniform(0.15, 0.85)),
        moles=moles,
        quirks=quirks,
        age_quirk=age_quirk,
    )


def sample_view(rng: np.random.Generator, traits: Traits, *, portrait: bool = False) -> View:
    """Draw the conditions of one photo; `portrait` shifts light, background and pose."""
    background = (_rgb(rng, 60, 230), _rgb(rng, 60, 230))
    if portrait:
        # A portrait from outside the training distribution: hard side light, a patterned
        # backdrop never used in training, a stronger head turn and a colour cast.
        yaw = float(rng.choice([-1, 1]) * rng.uniform(0.25, 0.4))
        light_strength = float(rng.uniform(0.45, 0.65))
        tint = (
            float(rng.uniform(0.85, 1.15)),
            float(rng.uniform(0.85, 1.15)),
            float(rng.uniform(0.85, 1.15)),
        )
        pattern = "stripes"
    else:
        yaw = float(rng.uniform(-0.25, 0.25))
        light_strength = float(rng.uniform(0.0, 0.35))
        tint = (1.0, 1.0, 1.0)
        pattern = "gradient"
    return View(
        yaw=yaw,
        pitch=float(rng.uniform(-0.1, 0.1)),
        roll=float(rng.uniform(-12, 12)),
        scale=float(rng.uniform(0.88, 1.08)),
        shift=(float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.05, 0.05))),
        light_angle=float(rng.uniform(0, 2 * math.pi)),
        light_strength=light_strength,
        brightness=float(rng.uniform(0.8, 1.15)),
        tint=tint,
        background=background,
        background_pattern=pattern,
        smile=float(rng.uniform(0.5, 1.0))
        if rng.random() < traits.smile_habit
        else float(rng.uniform(-0.2, 0.15)),
        mouth_open=bool(rng.random() < 0.3),
        glasses=bool(rng.random() < traits.glasses_habit),
        hat=bool(rng.random() < traits.hat_habit),
        hat_color=_rgb(rng),
        shirt=_rgb(rng, 20, 235),
        noise=float(rng.uniform(0, 6)),
        noise_seed=int(rng.integers(2**31)),
        age_offset=float(rng.uniform(-2.5, 2.5)),
    )


def true_attributes(traits: Traits, view: View) -> dict[str, bool]:
    """What the photo shows, before annotation quirks and noise."""
    age = max(0.0, traits.age + view.age_offset)
    has_hair = traits.hair_style != "bald"
    return {
        "Bald": not has_hair,
        "Bangs": traits.bangs,
        "Big_Nose": traits.nose_size > 1.25,
        "Black_Hair": has_hair and traits.hair_color == "black",
        "Blond_Hair": has_hair and traits.hair_color == "blond",
        "Brown_Hair": has_hair and traits.hair_color in ("brown", "red"),
        "Eyeglasses": view.glasses,
        "Gray_Hair": has_hair and traits.hair_color == "gray",
        "Male": traits.male,
        "Mouth_Slightly_Open": view.mouth_open,
        "Mustache": traits.mustache,
        "Oval_Face": traits.face_ratio > 1.38,
        "Pale_Skin": traits.skin_tone < 0.25,
        "Smiling": view.smile > 0.4,
        "Wavy_Hair": traits.hair_style == "wavy",
        "Wearing_Hat": view.hat,
        "Young": age < 40,
    }
