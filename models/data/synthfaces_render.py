"""Drawing of one synthfaces photo: an identity's traits under a photo's view, as pixels."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from models.data.synthfaces_traits import Traits, View

HAIR_COLORS = {
    "black": (28, 24, 22),
    "brown": (105, 66, 38),
    "blond": (222, 190, 120),
    "red": (160, 70, 35),
    "gray": (170, 168, 165),
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
