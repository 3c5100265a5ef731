"""The dataset doctor on demo data with known faults: 5% of labels flipped at random and 3%
near copies added (re-encoded, halved, cropped 5% or brightened; under the same label or,
one time in three, another; in a random split, the test ones unlabelled as a Kaggle test
folder is). Measures precision and recall of each kind of finding, the time each stage
takes on this machine (and what 100,000 photos would take), then retrains on the noisy
data, on the manifest ``--apply`` writes from the doctor's suggestions, and on the clean
data, all alike, and scores the three on a separate clean labelled set.

    python benchmarks/doctor.py [--per-class 50] [--folds 5] [--epochs 30] [--seeds 1]
        [--arch A --weights FILE] [--no-retrain] [--out /tmp/cropdoc-doctor] [--keep-data]
        [--json]

With ``--weights`` the folds and the retraining start from those weights with cropdoc's own
defaults (``cropdoc doctor DATA --arch A --weights FILE`` and nothing else), as a user with a
pretrained body would run it; without, the demo's recipe from scratch. ``--no-retrain``
stops after the findings (the retraining on the four manifests is most of the run's time).

``--keep-data`` uses the demo photos already in ``OUT/demo`` and ``OUT/heldout``, whichever
cropdoc drew them (the faults put in follow from the seed and the photos' names alone).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import time
from pathlib import Path

import numpy as np
from common import machine, report
from PIL import Image, ImageEnhance

CLASSES = 10
TRANSFORMS = ("jpeg50", "half", "crop5", "bright")


def settings(args, seed: int = 42) -> dict:
    """The training settings of the folds and of the retraining: with ``--weights``,
    cropdoc's defaults from them; else the demo's own (test_resnet from scratch at 256x192,
    ``cropdoc demo``), with ``--epochs``."""
    from cropdoc.demo import DEMO_TRAINING

    if args.weights:
        return {"arch": args.arch, "weights": str(args.weights), "workers": 2, "seed": seed}
    return {**DEMO_TRAINING, "epochs": args.epochs, "workers": 2, "seed": seed}


def make_data(args, out: Path) -> dict:
    """Demo photos, a clean and a noisy manifest of them, and a clean held-out set."""
    from cropdoc import make_demo_data

    drawn = (("demo", args.per_class, 0), ("heldout", args.heldout_per_class, 1))
    for folder, per_class, seed in drawn:
        if not (args.keep_data and (out / folder / "train.csv").exists()):
            make_demo_data(out / folder, per_class=per_class, seed=seed, workers=2)
    rng = np.random.default_rng(args.seed)
    photos = sorted((out / "demo" / "train_images").rglob("*.jpg"))
    classes = sorted({p.parent.name for p in photos})
    truth = {str(p): p.parent.name for p in photos}
    split = {str(p): "valid" if rng.random() < 0.2 else "train" for p in photos}
    given = dict(truth)
    for p in rng.choice(photos, round(args.flip * len(photos)), replace=False):
        given[str(p)] = rng.choice([c for c in classes if c != truth[str(p)]])
    copies, pairs = out / "copies", []
    copies.mkdir(exist_ok=True)
    chosen = rng.choice(photos, round(args.copies * len(photos)), replace=False)
    for n, original in enumerate(chosen):
        kind = TRANSFORMS[n % len(TRANSFORMS)]
        path = copies / f"copy{n:04d}-{kind}.{'png' if kind == 'half' else 'jpg'}"
        if not (args.keep_data and path.exists()):
            _copy(original, path, kind)
        truth[str(path)] = truth[str(original)]
        given[str(path)] = (
            given[str(original)]
            if rng.random() < 2 / 3
            else rng.choice([c for c in classes if c != given[str(original)]])
        )
        split[str(path)] = rng.choice(["train", "valid", "test"])
        if split[str(path)] == "test":
            given[str(path)] = ""  # an unlabelled test photo, as in a Kaggle test folder
        pairs.append((str(original), str(path)))
    (out / "manifests").mkdir(exist_ok=True)
    _manifest(out / "manifests" / "noisy.csv", [(p, given[p], split[p]) for p in given])
    clean = [(str(p), truth[str(p)], split[str(p)]) for p in photos]
    _manifest(out / "manifests" / "clean.csv", clean)
    return {"truth": truth, "given": given, "split": split, "pairs": pairs}


def _copy(source: Path, target: Path, kind: str) -> None:
    image = Image.open(source).convert("RGB")
    w, h = image.size
    if kind == "half":
        image = image.resize((w // 2, h // 2))
    elif kind == "crop5":
        image = image.crop((w // 20, h // 20, w, h))
    elif kind == "bright":
        image = ImageEnhance.Brightness(image).enhance(1.3)
    image.save(target, **({} if kind == "half" else {"quality": 50 if kind == "jpeg50" else 90}))


def _manifest(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])


def precision_recall(found: set, true: set) -> dict:
    hit = len(found & true)
    return {
        "found": len(found),
        "true": len(true),
        "precision": round(hit / len(found), 4) if found else None,
        "recall": round(hit / len(true), 4) if true else None,
    }


def score(result, data: dict) -> dict:
    """Precision and recall of each kind of finding against the faults put in."""
    true_pairs = {frozenset(p) for p in data["pairs"]}
    groups = [f for f in result.findings if f.kind in ("duplicate", "leak")]
    found_pairs = {frozenset(p) for f in groups for p in itertools.combinations(f.images, 2)}
    where = {p: s for f in groups for p, s in zip(f.images, f.splits, strict=True)}
    true_leaks = {frozenset(p) for p in data["pairs"] if _split(data, p[0]) != _split(data, p[1])}
    found_leaks = {
        frozenset((a, b))
        for f in result.of_kind("leak")
        for a, b in itertools.combinations(f.images, 2)
        if where[a] != where[b]
    }
    wrong = {p for p, label in data["given"].items() if label and label != data["truth"][p]}
    flagged = {f.images[0] for f in result.of_kind("label")}
    right = sum(
        f.suggested == data["truth"][f.images[0]]
        for f in result.of_kind("label")
        if f.images[0] in wrong
    )
    return {
        "near_duplicates": precision_recall(found_pairs, true_pairs),
        "leaks": precision_recall(found_leaks, true_leaks),
        "label_errors": {
            **precision_recall(flagged, wrong),
            "suggested_right": right,
        },
        "overlaps": [
            {
                "classes": sorted({label for label in f.labels if label}),
                "share": f.score,
                "photos": len(f.images),
                "wrong_labels_among_them": len(set(f.images) & wrong),
            }
            for f in result.of_kind("overlap")
        ],
        "outliers_flagged": len(result.of_kind("outlier")),
    }


def _split(data: dict, path: str) -> str:
    return "test" if not data["given"][path] else data["split"][path]


def decide(result, out: Path, label: str) -> Path:
    """The doctor's findings acted on without a look: each group of copies keeps its first
    photo, and each likely label error is dropped (``label="drop"``, confident learning's
    prune) or relabelled as suggested (``"relabel"``)."""
    decisions = {}
    for f in result.findings:
        if f.kind in ("duplicate", "leak"):
            decisions.update({p: ("drop", "") for p in f.images[1:]})
        elif f.kind == "label" and f.images[0] not in decisions:
            decisions[f.images[0]] = (label, f.suggested if label == "relabel" else "")
    path = out / f"decisions-{label}.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("path", "decision", "label")])
        csv.writer(f).writerows((p, d, new) for p, (d, new) in decisions.items())
    return path


def filters(args, out: Path, data: dict) -> dict:
    """Precision and recall of every cleanlab filter on the same out-of-fold probabilities
    (the folds are done: this reads their scores)."""
    from cleanlab.filter import find_label_issues

    from cropdoc import TrainConfig
    from cropdoc.audit.labels import out_of_fold
    from cropdoc.data.cache import Cache

    fit = {**settings(args), "cache": str(out / "cache")}
    config = TrainConfig(data=str(out / "manifests" / "noisy.csv"), **fit)
    cache = Cache(out / "cache")
    oof = out_of_fold(config, args.folds, out / "doctor" / "folds", cache)
    paths = [cache.images[i].path for i in oof.indices]
    wrong = {p for p, g in data["given"].items() if g and g != data["truth"][p]}
    result = {}
    for method in (
        "prune_by_noise_rate",
        "prune_by_class",
        "both",
        "confident_learning",
        "low_self_confidence",
        "low_normalized_margin",
        "predicted_neq_given",
    ):
        found = find_label_issues(oof.targets, oof.probs, filter_by=method)
        found &= oof.probs.argmax(1) != oof.targets  # a finding suggests another class
        result[method] = precision_recall(
            {p for p, f in zip(paths, found, strict=True) if f}, wrong
        )
    order = np.argsort(oof.probs[np.arange(len(paths)), oof.targets])  # least sure first
    result["ranked_top"] = {
        k: precision_recall({paths[i] for i in order[:k]}, wrong) for k in (10, 20, 30, 40)
    }
    return result


def retrain(args, manifests: dict[str, Path], heldout: Path, out: Path) -> dict:
    """Train on each manifest alike (one run per seed) and score on the held-out set; a run
    done before on the same manifest is read back, one on another manifest trained again."""
    import shutil

    from cropdoc import TrainConfig, evaluate, train

    errors = {}
    for name, manifest in manifests.items():
        errors[name] = []
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
        for seed in range(args.seeds):
            run = out / "retrain" / f"{name}-{seed}"
            done = run / "heldout.json"
            if not done.exists() or json.loads(done.read_text()).get("manifest") != digest:
                shutil.rmtree(run, ignore_errors=True)
                config = TrainConfig(
                    data=str(manifest),
                    out=str(run),
                    cache=str(out / f"cache-{name}-{digest}"),
                    **settings(args, seed=seed),
                )
                train(config)
                result = evaluate(run, heldout, out=run / "heldout")
                scored = {"error_rate": result["error_rate"], "manifest": digest}
                done.write_text(json.dumps(scored))
            errors[name].append(json.loads(done.read_text())["error_rate"])
    return {name: [round(e, 4) for e in values] for name, values in errors.items()}


def timings(cache_folder: Path) -> dict:
    """Seconds per photo of the fingerprints, and of the pair search at growing sizes (it
    is quadratic), from which 100,000 photos are estimated."""
    from cropdoc.audit.duplicates import candidate_pairs, fingerprints
    from cropdoc.data.cache import Cache

    cache = Cache(cache_folder)
    start = time.perf_counter()
    prints = fingerprints(cache)
    per_photo = (time.perf_counter() - start) / len(cache)
    rng = np.random.default_rng(0)
    search = {}
    for n in (2000, 4000, 8000):
        hashes = rng.integers(0, 2**63, (n, 6), dtype=np.int64).astype(np.uint64)
        start = time.perf_counter()
        candidate_pairs(hashes)
        search[n] = time.perf_counter() - start
    quadratic = search[8000] / 8000**2
    return {
        "fingerprint_ms_per_photo": round(1000 * per_photo, 2),
        "pair_search_s": {n: round(s, 3) for n, s in search.items()},
        "estimate_100k_fingerprints_min": round(per_photo * 100_000 / 60, 1),
        "estimate_100k_pair_search_min": round(quadratic * 100_000**2 / 60, 1),
        "photos": len(prints.digests),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--heldout-per-class", type=int, default=40)
    parser.add_argument("--flip", type=float, default=0.05)
    parser.add_argument("--copies", type=float, default=0.03)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--arch", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/cropdoc-doctor"))
    parser.add_argument("--keep-data", action="store_true")
    parser.add_argument("--no-retrain", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from cropdoc import apply_decisions, doctor, show_output

    show_output(True)  # progress lines on stderr

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = make_data(args, out)
    start = time.perf_counter()
    fit = {**settings(args), "cache": str(out / "cache")}
    noisy = out / "manifests" / "noisy.csv"
    result = doctor(noisy, out / "doctor", args.folds, fit)
    doctor_s = time.perf_counter() - start
    found = score(result, data)
    applied = {
        name: apply_decisions(noisy, decide(result, out, name), out / name / f"{name}.csv")
        for name in ("drop", "relabel")
    }
    fold_rows = [
        row
        for metrics in (out / "doctor" / "folds").glob("**/metrics.csv")
        for row in csv.DictReader(metrics.read_text().splitlines())
    ]
    fold_s = sum(float(row["seconds"]) for row in fold_rows)
    photos = len(data["given"])
    manifests = {
        "clean": out / "manifests" / "clean.csv",
        "noisy": noisy,
        "applied-drop": out / "drop" / "drop.csv",
        "applied-relabel": out / "relabel" / "relabel.csv",
    }
    fold_epochs = (args.folds - 1) * len(fold_rows) / args.folds  # per photo
    per_photo_epoch = fold_s / (photos * fold_epochs)
    summary = {
        "machine": machine(),
        "photos": photos,
        "flipped": sum(1 for p, g in data["given"].items() if g and g != data["truth"][p]),
        "copies": len(data["pairs"]),
        **found,
        "cleanlab_filters": {
            **filters(args, out, data),
            # the doctor's own rule, as scored above from its findings
            "low_self_confidence outside overlapping pairs (cropdoc's)": {
                k: found["label_errors"][k] for k in ("found", "true", "precision", "recall")
            },
        },
        "out_of_fold_error": result.summary["out_of_fold_error"],
        "doctor_seconds": round(doctor_s, 1),
        "folds_training_seconds": round(fold_s, 1),
        **timings(out / "cache"),
        "estimate_100k_folds_hours_at_this_speed": round(
            per_photo_epoch * 100_000 * fold_epochs / 3600, 1
        ),
        "applied": applied,
    }
    if not args.no_retrain:
        summary.update(retrained(args, manifests, out))
    report(summary, args.json)


def retrained(args, manifests: dict[str, Path], out: Path) -> dict:
    """The held-out error of a model trained on each manifest, and the share of the noise's
    harm each applied manifest recovers."""
    errors = retrain(args, manifests, out / "heldout", out)
    mean = {k: float(np.mean(v)) for k, v in errors.items()}
    caused = mean["noisy"] - mean["clean"]
    return {
        "heldout_error": errors,
        "heldout_error_mean": {k: round(v, 4) for k, v in mean.items()},
        "recovered_share": {
            name: round((mean["noisy"] - mean[name]) / caused, 3) if caused > 0 else None
            for name in ("applied-drop", "applied-relabel")
        },
    }


if __name__ == "__main__":
    main()
