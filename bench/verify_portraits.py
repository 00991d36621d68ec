"""False accepts and false rejects of the portrait verifier (models/verification.py).

The verifier is trained as onboarding trains it, on every photo of the synthfaces people, and
its threshold is the one onboarding sets (on held-out training photos). It is then judged on
photos it never saw: `SynthFaces.portrait` views (new light, a patterned backdrop, a stronger
head turn, a colour cast), three per person.

- false reject: a person's own new portrait scores under the threshold;
- false accept: a person's new portrait scores at or over the threshold against another
  person's reference (every other trained person), and so does a new portrait of someone never
  trained on (`--strangers` of them, against every trained person);
- a plain gray image and uniform noise, against every trained person.

    python bench/verify_portraits.py   # the pretrained preset's data: 400 people, 112 px
    python bench/verify_portraits.py --identities 60 --image-size 64 --views 2 --epochs 4
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

import torch

from models.data.synthfaces import SynthFaces, SynthFacesConfig, identity_name
from models.verification import VerifierConfig, calibrate, held_out_photos, train_verifier

PORTRAITS = 3
TARGETS = (0.01, 0.0075, 0.005, 0.0025)  # calibration targets of the trade-off table


def rate(hits: torch.Tensor) -> str:
    """A share as a percentage with its count."""
    return f"{100 * float(hits.double().mean()):.2f} % ({int(hits.sum())}/{hits.numel()})"


def main() -> None:
    """Train, calibrate, then print the rates on new portraits."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--strangers", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--views", type=int, default=VerifierConfig.views)
    parser.add_argument("--epochs", type=int, default=VerifierConfig.epochs)
    parser.add_argument("--depth", type=int, default=VerifierConfig.depth)
    parser.add_argument("--far", type=float, default=VerifierConfig.far)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    faces = SynthFaces(SynthFacesConfig(args.identities, args.image_size, args.seed))
    data = faces.generate()
    cfg = VerifierConfig(views=args.views, epochs=args.epochs, depth=args.depth, far=args.far)
    started = time.perf_counter()
    verifier = train_verifier(
        data.load_image, range(len(data.keys)), data.identities, cfg,
        report=lambda done, total: print(f"  epoch {done}/{total}", flush=True),
    )  # fmt: skip
    seconds = time.perf_counter() - started
    cal = verifier.calibration

    people = faces.identities
    everyone = SynthFaces(
        SynthFacesConfig(args.identities + args.strangers, args.image_size, args.seed)
    )
    strangers = [identity_name(args.identities + k) for k in range(args.strangers)]
    owned = [everyone.portrait(p, k) for p in people for k in range(PORTRAITS)]
    foreign = [everyone.portrait(s, 0) for s in strangers]
    size = args.image_size
    blanks = [torch.full((3, size, size), 128, dtype=torch.uint8),
              torch.randint(0, 256, (3, size, size), dtype=torch.uint8)]  # fmt: skip

    refs = torch.stack([verifier.references[p] for p in people])
    embedder = verifier.embedder
    own = embedder.embed_images(owned) @ refs.T
    owner = torch.arange(len(people)).repeat_interleave(PORTRAITS)
    rows = torch.arange(len(owned))
    genuine = own[rows, owner]
    others = torch.ones_like(own, dtype=torch.bool)
    others[rows, owner] = False
    impostor = own[others]
    stranger = (embedder.embed_images(foreign) @ refs.T).flatten()
    blank = (embedder.embed_images(blanks) @ refs.T).flatten()
    t = cal.threshold

    print(f"config: {asdict(cfg)}")
    print(f"{args.identities} people, {len(data.keys)} photos at {size} px; "
          f"training and calibration took {seconds:.0f} s")  # fmt: skip
    print(f"threshold {t:.4f}: set for {cal.far:.2%} false accepts on {cal.genuine} held-out "
          f"photos ({cal.false_reject_rate:.1%} of them rejected)")  # fmt: skip
    print(f"false rejects, own new portrait:         {rate(genuine < t)}")
    print(f"false accepts, another trained person:   {rate(impostor >= t)}")
    print(f"false accepts, a person never trained on: {rate(stranger >= t)}")
    print(f"false accepts, gray and noise images:    {rate(blank >= t)}")
    exact = float(torch.quantile(impostor.double(), 0.99))
    print(f"(at the threshold giving exactly 1 % false accepts on these portraits: "
          f"{rate(genuine < exact)} false rejects)")  # fmt: skip

    # the same embedder, its threshold set for other false-accept targets on held-out photos
    plain = embedder.embed_images([data.load_image(r) for r in range(len(data.keys))])
    held = held_out_photos(data.identities, cfg.seed)
    print("\n| calibrated for | threshold | false rejects | false accepts, trained | "
          "false accepts, never trained |")  # fmt: skip
    print("|---|---|---|---|---|")
    for far in TARGETS:
        u = calibrate(plain, data.identities, held, far).threshold
        print(f"| {far:.2%} | {u:.4f} | {rate(genuine < u)} | {rate(impostor >= u)} | "
              f"{rate(stranger >= u)} |")  # fmt: skip


if __name__ == "__main__":
    main()
