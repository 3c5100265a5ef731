"""Calibration and out-of-scope detection of the demo model, every method side by side.

    python benchmarks/trust.py [--run demo/runs/test_resnet-scratch] [--json]

In scope: a demo dataset drawn with another seed (``cropdoc demo-data --seed 1``). Out of
scope, none of it drawn by cropdoc: scikit-learn's two shipped photos (a temple in China,
a flower) cut into random crops, its handwritten digits, uniform noise and flat colours.
Methods: max-softmax (1 - calibrated top-1), energy (-logsumexp of the logits), kNN of the
normalised penultimate features (k = 1, 5, 10, 50; the training split as the bank) and a
class-conditional Mahalanobis distance (shared covariance). Needs scikit-learn (the
``bench`` extra). Without ``--run`` it first runs ``cropdoc demo`` into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy.special import logsumexp

CROPS_PER_PHOTO = 100
DIGITS = 200
SYNTHETIC = 100
KS = (1, 5, 10, 50)


def out_of_scope_sets(seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Images no cropdoc code drew, as (H, W, 3) uint8 arrays."""
    from PIL import Image
    from sklearn.datasets import load_digits, load_sample_images

    rng = np.random.default_rng(seed)
    crops = []
    for photo in load_sample_images().images:
        h, w = photo.shape[:2]
        for _ in range(CROPS_PER_PHOTO):
            side = int(rng.integers(96, min(h, w)))
            y, x = rng.integers(0, h - side), rng.integers(0, w - side)
            crops.append(np.ascontiguousarray(photo[y : y + side, x : x + side]))
    digits = []
    for image in load_digits().images[:DIGITS]:
        grey = (255 - image * 16).clip(0, 255).astype(np.uint8)  # dark ink on white paper
        big = np.asarray(Image.fromarray(grey).resize((192, 256), Image.Resampling.BILINEAR))
        digits.append(np.repeat(big[..., None], 3, axis=2))
    noise = [rng.integers(0, 256, (256, 192, 3), dtype=np.uint8) for _ in range(SYNTHETIC)]
    flat = [np.full((256, 192, 3), rng.integers(0, 256, 3), np.uint8) for _ in range(SYNTHETIC)]
    return {"photo crops": crops, "digits": digits, "noise": noise, "flat colours": flat}


@torch.no_grad()
def outputs(scoring, meta, images: list[np.ndarray], bs: int = 64):
    """Logits, penultimate features and the bundle's own out-of-scope score (its
    ``ScoringModel``, as predict and serve run it) of decoded images, shrunk as the cache
    would shrink them."""
    from PIL import Image

    from cropdoc.data.loader import make_canvas
    from cropdoc.model.archs import features_and_logits
    from cropdoc.model.inputs import validation_input

    logits, features, deployed = [], [], []
    for start in range(0, len(images), bs):
        batch = []
        for pixels in images[start : start + bs]:
            h, w = pixels.shape[:2]
            scale = min(1.0, meta.cache_size / max(h, w))
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            batch.append(np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BOX)))
        canvas, sizes = make_canvas(batch)
        x = validation_input(meta, canvas, sizes)
        f, out = features_and_logits(scoring.model, x)
        logits.append(out.float().numpy())
        features.append(f.float().numpy())
        deployed.append(scoring(x)[1].numpy())
    return np.concatenate(logits), np.concatenate(features), np.concatenate(deployed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="A trained demo run (default: train one).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from cropdoc.config import TrainConfig
    from cropdoc.contract import calibration
    from cropdoc.contract.ood import Mahalanobis, knn_distance, normalise
    from cropdoc.contract.reliability import auroc
    from cropdoc.data.cache import open_cache
    from cropdoc.data.demo import make_demo_data
    from cropdoc.data.images import load_image
    from cropdoc.data.loader import split_cache
    from cropdoc.demo import run_demo
    from cropdoc.model.scoring import load_scoring_model

    work = Path(tempfile.mkdtemp(prefix="cropdoc-trust-"))
    run = args.run or Path(run_demo(work / "demo")["run"])
    scoring, meta = load_scoring_model(run)
    torch.set_num_threads(2)

    # in scope: the same kind of photos, drawn with another seed
    test = make_demo_data(work / "test", per_class=20, seed=1)
    rows = [line.split(",") for line in (Path(test["root"]) / "train.csv").read_text().split()]
    paths = [Path(test["root"]) / "train_images" / r[1] / r[0] for r in rows[1:]]
    targets = np.array([meta.classes.index(r[1]) for r in rows[1:]])
    in_images = [load_image(p, max_size=meta.cache_size) for p in paths]
    in_logits, in_features, in_deployed = outputs(scoring, meta, in_images)

    # the bank and the Mahalanobis statistics: the run's training split
    config = TrainConfig.from_yaml(run / "config.yaml")
    cache = open_cache(config.data, config.cache, config.cache_size, config.workers)
    split = split_cache(cache, config.valid_pct, config.seed)
    train_images = [cache.pixels(int(i)) for i in split.train]
    _, train_features, _ = outputs(scoring, meta, train_images)
    bank = normalise(train_features)
    train_targets = split.targets[split.train]
    maha = Mahalanobis.fit(train_features, train_targets, len(meta.classes), in_features)

    t = meta.trust.temperature
    before, after = calibration.softmax(in_logits), calibration.softmax(in_logits, t)
    result = {
        "run": str(run),
        "in_scope_images": len(in_images),
        "error_rate": float((after.argmax(1) != targets).mean()),
        "temperature": t,
        "ece": [calibration.ece(before, targets), calibration.ece(after, targets)],
        "nll": [calibration.nll(before, targets), calibration.nll(after, targets)],
        "methods": {},
    }

    def scores(logits, features) -> dict[str, np.ndarray]:
        out = {
            "max-softmax": 1 - calibration.softmax(logits, t).max(1),
            "energy": -logsumexp(logits, axis=1),
            "mahalanobis": maha.distance(features),
        }
        out.update({f"knn k={k}": knn_distance(features, bank, k) for k in KS})
        return out

    in_scores = scores(in_logits, in_features)
    sets = out_of_scope_sets()
    scored = {name: outputs(scoring, meta, images) for name, images in sets.items()}
    out_scores = {name: scores(logits, f) for name, (logits, f, _) in scored.items()}
    for method, inside in in_scores.items():
        threshold = np.quantile(inside, 0.95)  # 95% of in-scope photos pass
        everything = np.concatenate([s[method] for s in out_scores.values()])
        result["methods"][method] = {
            "auroc": auroc(inside, everything),
            "flagged_at_95": float((everything > threshold).mean()),
            **{f"auroc {name}": auroc(inside, s[method]) for name, s in out_scores.items()},
        }
    # the bundle as deployed: its own score and threshold (set on the run's validation split)
    flagged = np.concatenate([deployed for _, _, deployed in scored.values()])
    result["bundle"] = {
        "method": meta.trust.ood_method,
        "threshold": meta.trust.ood_threshold,
        "auroc": auroc(in_deployed, flagged),
        "in_scope_flagged": float((in_deployed > 1).mean()),
        "out_of_scope_flagged": float((flagged > 1).mean()),
        "out_of_scope_images": int(len(flagged)),
        "per_set_flagged": {n: float((d > 1).mean()) for n, (_, _, d) in scored.items()},
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"model {run}: error {result['error_rate']:.3f} on {len(in_images)} in-scope photos")
    print(
        f"ECE {result['ece'][0]:.4f} -> {result['ece'][1]:.4f} (temperature {t:.3f}); "
        f"NLL {result['nll'][0]:.4f} -> {result['nll'][1]:.4f}"
    )
    names = list(sets)
    print(f"{'method':<14} {'AUROC':>6} {'flagged@95':>10} " + " ".join(f"{n:>13}" for n in names))
    for method, m in result["methods"].items():
        print(
            f"{method:<14} {m['auroc']:>6.4f} {m['flagged_at_95']:>10.3f} "
            + " ".join(f"{m['auroc ' + n]:>13.4f}" for n in names)
        )
    b = result["bundle"]
    print(
        f"bundle ({b['method']}, threshold from the validation split): AUROC "
        f"{b['auroc']:.4f}; {b['out_of_scope_flagged']:.3f} of {b['out_of_scope_images']} "
        f"out-of-scope flagged ("
        + ", ".join(f"{n} {v:.2f}" for n, v in b["per_set_flagged"].items())
        + f"), {b['in_scope_flagged']:.3f} of in-scope flagged"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
