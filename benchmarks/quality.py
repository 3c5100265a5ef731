"""The photo-quality checks (``cropdoc.contract.quality``) on photos degraded in known ways:
the share of good photos sent back (target at most 2%) and of degraded ones caught (target
at least 90%), by kind of fault.

Good photos: demo close-ups and field photos (``demo-data --size``) of a draw the thresholds
were not chosen on, the two real leaf photos of ``benchmarks/real_data.py`` when they are
there, and every photo of each set of the real-photo folder (``--real-photos``, default
``../shared/real-photos`` when it exists): labelled photos taken in fields and labs, every
one usable, so each one sent back is a false alarm. Degraded: each close-up blurred
(Gaussian, radius 1.5 / 2.5 / 4 px), darkened (x0.25 and x0.15, with sensor noise),
overexposed (x4 and x6, clipped), shrunk to 90x120 px, and photos of sky and of a grey wall
(drawn); and milder faults (radius 1, x0.4, x2.5) to show where the checks stop. Every photo
is written as a JPEG and read back as ``predict`` reads it (decoded to 256 px), then
checked.

    python benchmarks/quality.py [--out /tmp/cropdoc-quality] [--per-class 20] [--seed 4]
        [--real-photos ../shared/real-photos] [--json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import machine, report
from PIL import Image, ImageFilter

from cropdoc.contract.quality import THRESHOLDS, check
from cropdoc.data.images import is_image_name, read_image

REAL_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "real-photos"

EXPECTED = {
    "blurred": "blurred",
    "dark": "too_dark",
    "overexposed": "overexposed",
    "small": "too_small",
    "sky or wall": "not_a_leaf",
    "slightly blurred (radius 1)": "blurred",
    "dim (x0.4)": "too_dark",
    "bright (x2.5)": "overexposed",
}


def degraded(image: Image.Image, rng: np.random.Generator) -> dict[str, list[Image.Image]]:
    """The faulty versions of one good photo, by kind."""
    pixels = np.asarray(image).astype(np.float64)
    noisy = lambda f: np.clip(pixels * f + rng.normal(0, 2.5, pixels.shape), 0, 255)  # noqa: E731
    return {
        "blurred": [image.filter(ImageFilter.GaussianBlur(r)) for r in (1.5, 2.5, 4)],
        "dark": [Image.fromarray(noisy(f).astype(np.uint8)) for f in (0.25, 0.15)],
        "overexposed": [
            Image.fromarray(np.clip(pixels * f, 0, 255).astype(np.uint8)) for f in (4, 6)
        ],  # fmt: skip
        "small": [image.resize((90, 120))],
        # milder faults, to show where the checks stop (a photo a model may still read)
        "slightly blurred (radius 1)": [image.filter(ImageFilter.GaussianBlur(1))],
        "dim (x0.4)": [Image.fromarray(noisy(0.4).astype(np.uint8))],
        "bright (x2.5)": [Image.fromarray(np.clip(pixels * 2.5, 0, 255).astype(np.uint8))],
    }


def scenes(rng: np.random.Generator, count: int) -> list[Image.Image]:
    """Photos of sky (a blue gradient with clouds) and of grey walls, with noise."""
    out = []
    y = np.linspace(0, 1, 480)[:, None, None]
    for n in range(count):
        if n % 2 == 0:
            top, bottom = np.array([70, 120, 200]), np.array([160, 200, 240])
            sky = top + (bottom - top) * y + np.zeros((480, 640, 3))
            for _ in range(4):  # clouds
                cy, cx, r = rng.integers(0, 480), rng.integers(0, 640), rng.integers(30, 90)
                yy, xx = np.ogrid[:480, :640]
                sky[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 235
            pixels = sky
        else:
            pixels = np.full((480, 640, 3), rng.integers(90, 170)) + rng.normal(0, 6, (480, 640, 1))
        out.append(Image.fromarray(np.clip(pixels + rng.normal(0, 2, (480, 640, 3)), 0, 255)
                                   .astype(np.uint8)))  # fmt: skip
    return out


def verdict(path: Path) -> str:
    pixels, original = read_image(path, max_size=256)
    return check(pixels, original).problem


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/cropdoc-quality"))
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--real-photos", type=Path, default=REAL_PHOTOS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from cropdoc.data.demo import make_demo_data

    started = time.perf_counter()
    close = make_demo_data(args.out / "close", per_class=args.per_class, seed=args.seed,
                           workers=2)["root"]  # fmt: skip
    field = make_demo_data(args.out / "field", per_class=2, seed=args.seed, workers=2,
                           size=(1536, 2048))["root"]  # fmt: skip
    rng = np.random.default_rng(args.seed)
    photos = args.out / "photos"
    written: dict[str, list[Path]] = {}

    def keep(kind: str, image: Image.Image, name: str) -> None:
        path = photos / kind.replace(" ", "-") / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)
        written.setdefault(kind, []).append(path)

    for path in sorted(Path(close).glob("train_images/*/*.jpg")):
        image = Image.open(path).convert("RGB")
        written.setdefault("good: close-up", []).append(path)
        for kind, images in degraded(image, rng).items():
            for n, bad in enumerate(images):
                keep(kind, bad, f"{path.stem}-{n}")
    written["good: field photo"] = sorted(Path(field).glob("train_images/*/*.jpg"))
    real = Path.home() / ".cache" / "cropdoc-real" / "leaves"
    if real.is_dir():
        written["good: real leaf photo"] = sorted(real.iterdir())
    if args.real_photos.is_dir():
        for folder in sorted(p for p in args.real_photos.iterdir() if p.is_dir()):
            photos_of_set = sorted(p for p in folder.rglob("*") if is_image_name(p))
            written[f"good: real {folder.name}"] = photos_of_set
    for n, image in enumerate(scenes(rng, 40)):
        keep("sky or wall", image, str(n))
    rows = {}
    for kind, paths in written.items():
        problems = [verdict(p) for p in paths]
        counts = {p: problems.count(p) for p in sorted(set(problems))}
        share = sum(bool(p) for p in problems) / len(problems)
        right = (
            sum(p == EXPECTED[kind] for p in problems) / len(problems) if kind in EXPECTED else None
        )
        rows[kind] = {
            "photos": len(paths),
            "sent back": round(100 * share, 1),
            "for the right reason": None if right is None else round(100 * right, 1),
            "verdicts": counts,
        }
    result = {
        "machine": machine(),
        "thresholds": dict(vars(THRESHOLDS)),
        "rows": rows,
        "seconds": round(time.perf_counter() - started),
    }
    report(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
