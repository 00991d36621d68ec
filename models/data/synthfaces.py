"""synthfaces: a procedural face data set, deterministic from a seed, with identities to memorize.

Each identity has persistent traits (face shape, skin tone, hair, eyes, nose, mouth, eyeglasses
habit, age, a few moles) and each photo varies in pose, scale, rotation, lighting, background,
expression and noise. Labels follow CelebA's attribute names and MUFAC's age groups. Like real
annotations, each identity carries a few consistent label quirks (an annotator who always marks
this person's hair as brown, or guesses their age one group off), so a model that trained on an
identity scores better on it than a model that never saw it: the gap unlearning has to close.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from models.data.base import AGE_GROUPS, FaceData, TaskSpec, age_group

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

HAIR_COLORS = {
    "black": (28, 24, 22),
    "brown": (105, 66, 38),
    "blond": (222, 190, 120),
    "red": (160, 70, 35),
    "gray": (170, 168, 165),
}
EYE_COLORS = ((60, 40, 25), (40, 90, 150), (70, 120, 70), (110, 80, 40), (30, 30, 30))


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


def _background(size: int, view: View) -> Image.Image:
    top, bottom = np.array(view.background[0], float), np.array(view.background[1], float)
    t = np.linspace(0, 1, size)[:, None, None]
    img = top * (1 - t) + bottom * t
    img = np.broadcast_to(img, (size, size, 3)).copy()
    if view.background_pattern == "stripes":
        stripes = (np.arange(size) // max(2, size // 10)) % 2 == 0
        img[:, stripes] = 255 - img[:, stripes]
    return Image.fromarray(img.astype(np.uint8))


def _draw_face(size: int, traits: Traits, view: View) -> Image.Image:
    """Draw the head on a transparent layer of `size` pixels (before rotation)."""
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    age = max(0.0, traits.age + view.age_offset)
    child = float(np.clip((14 - age) / 12, 0, 1))  # children: smaller, rounder heads, bigger eyes
    fw = size * 0.2 * traits.face_width * view.scale * (1 - 0.18 * child)
    fh = fw * (traits.face_ratio - 0.25 * child)
    cx = size / 2 + view.shift[0] * size
    cy = size / 2 + view.shift[1] * size + size * 0.05
    dx = view.yaw * fw  # facial features slide sideways as the head turns
    dy = view.pitch * fh
    hair = HAIR_COLORS[traits.hair_color]
    skin = traits.skin

    def ell(x: float, y: float, rx: float, ry: float, **kw: object) -> None:
        d.ellipse([x - rx, y - ry, x + rx, y + ry], **kw)  # type: ignore[arg-type]

    d.rectangle([cx - fw * 1.6, cy + fh * 0.75, cx + fw * 1.6, size], fill=view.shirt)  # shoulders
    d.rectangle([cx - fw * 0.35, cy + fh * 0.5, cx + fw * 0.35, cy + fh * 1.05], fill=skin)  # neck
    if traits.hair_style in ("long", "wavy"):
        ell(cx, cy + fh * 0.1, fw * 1.22, fh * 1.15, fill=hair)
    ell(cx - fw + dx * 0.3, cy, fw * 0.16, fh * 0.2, fill=skin)  # ears
    ell(cx + fw + dx * 0.3, cy, fw * 0.16, fh * 0.2, fill=skin)
    ell(cx, cy, fw, fh, fill=skin)
    if traits.hair_style == "bald":  # a shiny scalp
        ell(
            cx - fw * 0.2,
            cy - fh * 0.7,
            fw * 0.35,
            fh * 0.15,
            fill=tuple(min(255, c + 45) for c in skin),
        )
    if traits.male:  # a squarer jaw
        d.rectangle([cx - fw * 0.75, cy + fh * 0.2, cx + fw * 0.75, cy + fh * 0.8], fill=skin)
    if traits.hair_style == "short":
        d.pieslice(
            [cx - fw * 1.05, cy - fh * 1.08, cx + fw * 1.05, cy + fh * 0.3], 180, 360, fill=hair
        )
    elif traits.hair_style in ("long", "wavy"):
        d.pieslice(
            [cx - fw * 1.1, cy - fh * 1.12, cx + fw * 1.1, cy + fh * 0.35], 180, 360, fill=hair
        )
        if traits.hair_style == "wavy":
            for k in range(7):
                x = cx - fw * 1.15 + k * fw * 2.3 / 6
                ell(x, cy - fh * 0.55 + (k % 2) * fh * 0.12, fw * 0.2, fw * 0.2, fill=hair)
    if traits.bangs:
        d.chord([cx - fw * 0.85, cy - fh * 0.95, cx + fw * 0.85, cy - fh * 0.2], 0, 180, fill=hair)
    if age > 50:  # wrinkles
        for k in range(int((age - 45) // 10) + 1):
            y = cy - fh * (0.45 - 0.07 * k)
            d.line([cx - fw * 0.4 + dx, y, cx + fw * 0.4 + dx, y], fill=(90, 60, 50), width=1)
    for mx, my, mr in traits.moles:
        ell(cx + mx * fw + dx * 0.8, cy + my * fh + dy, mr * size, mr * size, fill=(60, 35, 25))
    eye_y = cy - fh * 0.12 + dy
    spacing = fw * 0.4 * traits.eye_spacing
    eye_r = fw * 0.13 * traits.eye_size * (1 + 0.35 * child)
    brow = (150, 150, 150) if traits.hair_color == "gray" else HAIR_COLORS[traits.hair_color]
    lens = [(-1, cx - spacing + dx), (1, cx + spacing + dx)]
    if view.glasses:  # tinted lenses under the eyes, frames on top
        for _, ex in lens:
            ell(ex, eye_y, eye_r * 1.9, eye_r * 1.5, fill=(175, 205, 235))
    for side, ex in lens:
        ell(ex, eye_y, eye_r * 1.3, eye_r * 0.8, fill=(245, 245, 245))
        ell(ex + view.yaw * eye_r * 0.6, eye_y, eye_r * 0.6, eye_r * 0.6, fill=traits.eye_color)
        ell(ex + view.yaw * eye_r * 0.6, eye_y, eye_r * 0.25, eye_r * 0.25, fill=(10, 10, 10))
        by = eye_y - eye_r * 1.6
        d.line(
            [ex - eye_r * 1.3, by, ex + eye_r * 1.3, by - side * 0.0],
            fill=brow,
            width=traits.brow_thickness,
        )
        if view.glasses:
            box = [ex - eye_r * 1.9, eye_y - eye_r * 1.5, ex + eye_r * 1.9, eye_y + eye_r * 1.5]
            if traits.glasses_round:
                d.ellipse(box, outline=traits.glasses_color, width=3)
            else:
                d.rectangle(box, outline=traits.glasses_color, width=3)
    if view.glasses:
        d.line(
            [cx - spacing + eye_r * 1.9 + dx, eye_y, cx + spacing - eye_r * 1.9 + dx, eye_y],
            fill=traits.glasses_color,
            width=3,
        )
    nose = fw * 0.16 * traits.nose_size
    ny = cy + fh * 0.18 + dy
    d.polygon(
        [
            (cx + dx * 1.2, ny - nose * 1.6),
            (cx + dx * 1.2 - nose, ny + nose * 0.5),
            (cx + dx * 1.2 + nose, ny + nose * 0.5),
        ],
        fill=tuple(int(c * 0.65) for c in skin),
    )
    mw = fw * 0.38 * traits.mouth_width
    my = cy + fh * 0.5 + dy
    lips = (150, 60, 60) if traits.male else (190, 40, 70)
    if view.mouth_open:
        ell(cx + dx, my, mw * 0.6, mw * 0.35, fill=(60, 15, 20))
    curve = view.smile * mw * 0.5
    if curve > 0:
        d.chord([cx - mw + dx, my - curve, cx + mw + dx, my + curve], 0, 180, fill=lips)
    else:
        d.line([cx - mw + dx, my, cx + mw + dx, my - curve], fill=lips, width=3)
    if traits.mustache:
        d.polygon(
            [
                (cx - mw * 1.1 + dx, my - mw * 0.05),
                (cx + dx, my - mw * 0.65),
                (cx + mw * 1.1 + dx, my - mw * 0.05),
                (cx + dx, my - mw * 0.3),
            ],
            fill=brow,
        )
    if view.hat:
        d.rectangle(
            [cx - fw * 1.35, cy - fh * 0.72, cx + fw * 1.35, cy - fh * 0.6], fill=view.hat_color
        )
        d.rectangle(
            [cx - fw * 0.9, cy - fh * 1.35, cx + fw * 0.9, cy - fh * 0.66], fill=view.hat_color
        )
    return layer


def render(traits: Traits, view: View, image_size: int) -> torch.Tensor:
    """Render one photo as a uint8 tensor of shape (3, image_size, image_size)."""
    canvas = image_size * 2  # draw at twice the size and downsample, for anti-aliasing
    image = _background(canvas, view)
    face = _draw_face(canvas, traits, view).rotate(
        view.roll, resample=Image.BILINEAR, center=(canvas / 2, canvas / 2)
    )
    image.paste(face, (0, 0), face)
    image = image.resize((image_size, image_size), Image.BOX)
    pixels = np.asarray(image, dtype=np.float32)
    yy, xx = np.mgrid[0:image_size, 0:image_size] / max(1, image_size - 1) - 0.5
    light = (
        1
        + view.light_strength
        * (xx * math.cos(view.light_angle) + yy * math.sin(view.light_angle))
        * 2
    )
    pixels = pixels * light[..., None] * view.brightness * np.array(view.tint, np.float32)
    pixels = pixels + np.random.default_rng(view.noise_seed).normal(0, view.noise, pixels.shape)
    return torch.from_numpy(np.clip(pixels, 0, 255).astype(np.uint8)).permute(2, 0, 1).contiguous()


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
