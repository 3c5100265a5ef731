"""The main job on real leaf photos, side by side in one run: for each set of the real-photo
folder (``../shared/real-photos`` by default; the photos are read where they are, never
copied), three arms with the same real ImageNet weights, scored on the same validation
photos (the set's ``valid/`` split, else cropdoc's seeded 20%):

- **cropdoc**: ``cropdoc train DATA --arch A --weights W`` and nothing else (its defaults),
  which calibrates at the end; then the validation photos scored as ``evaluate`` scores
  them, and another set's validation photos (``OTHER``) answered as ``predict`` answers
  them: the share of its own photos kept in scope, and of the other's called out of scope;
- **fastai**: ``vision_learner`` with the same weights and the seed's recipe
  (``Resize(192, squish)``, ``aug_transforms(size=128, min_scale=0.75)``, ``fine_tune(5,
  0.01)``, batches of 64, fp32 on the CPU);
- **cropdoc-128** (only when ``--arms`` names it): cropdoc's defaults at fastai's sizes
  (``--item-size 192 --size 128``), the two at the same pixels;
- **probe**: no fine-tuning, the floor any fine-tuning must beat: a logistic regression
  (its C chosen by 5-fold cross-validation on the training photos) on the frozen body's
  pooled features, the photos resized as timm's own evaluation transform does at the
  architecture's input size.

Each arm runs in a process of its own (its peak memory is its own): accuracy and macro-F1
on the validation photos, ECE (cropdoc's after its temperature; the others' as they come),
the seconds from the photos to a trained model (reading and caching them included), and
the peak resident memory. A finished arm under ``--out`` is reused.

    python benchmarks/real_photos.py [DATA] [--sets beans,rice-field,plantdoc,plantvillage-potato]
        [--arms cropdoc,fastai,probe] [--arch tf_efficientnet_lite0] [--weights FILE]
        [--out ~/.cache/cropdoc-real-photos] [--json]

The weights default to ``benchmarks/real_data.py``'s for the architecture (fetched once).
``--sets lab-to-field``: a model trained on PlantVillage's lab photos of potato, scored on
its own validation photos and on PlantDoc's field photos of the same three classes (linked
under PlantVillage's names in ``--out``), against one trained on PlantDoc's field photos.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from common import machine

SETS = ("beans", "rice-field", "plantdoc", "plantvillage-potato")
LAB_TO_FIELD = "lab-to-field"  # --sets: PlantVillage's potato model on PlantDoc's potato photos
ARMS = ("cropdoc", "fastai", "probe")  # --arms may add "cropdoc-128": fastai's sizes
FASTAI_SIZES = {"item_size": "192", "size": "128"}  # the seed's Resize(192), aug size 128
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "real-photos"
ARCH = "tf_efficientnet_lite0"
# photos each set's model should call out of scope: another set's validation photos
OTHER = {
    "beans": "plantdoc",
    "rice-field": "beans",
    "plantdoc": "beans",
    "plantvillage-potato": "beans",
}


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM: its own since exec)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status)[1]) / 1024


def split(data: Path, cache: Path) -> tuple[list, list, list[str]]:
    """(training photos, validation photos, classes) as cropdoc splits ``data``: each a
    list of (path, class index)."""
    from cropdoc.config import TrainConfig
    from cropdoc.data.cache import open_cache
    from cropdoc.data.loader import run_split

    config = TrainConfig(data=str(data), cache=str(cache), workers=2)
    opened = open_cache(config.data, config.cache, config.cache_size, config.workers)
    found = run_split(opened, config)

    def rows(indices) -> list[tuple[str, int]]:
        return [(opened.images[i].path, int(found.targets[i])) for i in indices]

    return rows(found.train), rows(found.valid), list(found.classes)


def scores(probs, targets) -> dict:
    """Accuracy, macro-F1 and ECE (15 bins) of calibrated probabilities."""
    import numpy as np
    from sklearn.metrics import f1_score

    from cropdoc.contract.calibration import ece

    probs, targets = np.asarray(probs, np.float64), np.asarray(targets)
    predicted = probs.argmax(1)
    return {
        "accuracy": round(float((predicted == targets).mean()), 4),
        "macro_f1": round(float(f1_score(targets, predicted, average="macro")), 4),
        "ece": round(float(ece(probs, targets)), 4),
        "valid_photos": int(len(targets)),
    }


def cropdoc_arm(data: Path, work: Path, arch: str, weights: Path, **settings) -> dict:
    """``cropdoc train DATA --arch A --weights W`` with its defaults (but ``settings``),
    then its validation photos scored as ``evaluate`` scores them, and the photos of another
    set it should call out of scope (``OTHER``), as ``predict`` answers them."""
    from cropdoc.config import TrainConfig
    from cropdoc.engine.trainer import train
    from cropdoc.evaluation.evaluate import evaluate
    from cropdoc.inference.predict import predict

    run = work / "run"
    started = time.perf_counter()
    config = TrainConfig(
        data=str(data),
        arch=arch,
        weights=str(weights),
        cache=str(work / "cache"),
        out=str(run),
        **settings,
    )
    summary = train(config)
    seconds = time.perf_counter() - started
    result = evaluate(run)
    used = TrainConfig.from_yaml(run / "config.yaml")
    probs, targets = _run_validation(run)
    verdicts = result["verdicts"]
    other = data.parent / OTHER[data.name] / "valid"
    answers = predict([run], [other]).verdicts()
    return {
        **scores(probs, targets),
        "train_seconds": round(seconds, 1),
        "epochs": summary["epochs"],
        "size": used.size,
        "bs": used.bs,
        "lr": summary["lr"],
        "in_scope": round(1 - verdicts["out_of_scope"] / sum(verdicts.values()), 4),
        "verdicts": verdicts,
        "other_set": OTHER[data.name],
        "other_out_of_scope": round(answers.count("out_of_scope") / len(answers), 4),
        "other_verdicts": {v: answers.count(v) for v in sorted(set(answers))},
        "run": str(run),
    }


def _run_validation(run: Path):
    """The calibrated probabilities and classes of a run's validation photos."""
    from cropdoc.data.loader import labelled_images
    from cropdoc.evaluation.evaluate import cache_scores
    from cropdoc.model.device import pick_device
    from cropdoc.model.scoring import load_scoring_model

    model, meta = load_scoring_model(run)
    cache, indices, targets = labelled_images(run, meta.cache_size, None, meta.classes)
    views, _, _ = cache_scores(model, meta, cache, indices, False, 64, pick_device("cpu"))
    return views[0], targets


def fastai_arm(data: Path, work: Path, arch: str, weights: Path) -> dict:
    """fastai's ``vision_learner`` with the same weights and the seed's recipe."""
    import numpy as np
    import torch
    from fastai.vision.all import (
        CategoryBlock,
        DataBlock,
        ImageBlock,
        Resize,
        aug_transforms,
        error_rate,
        set_seed,
        vision_learner,
    )

    train, valid, classes = split(data, work / "cache")
    valid_paths = {p for p, _ in valid}
    label = {p: classes[c] for p, c in [*train, *valid]}
    set_seed(42, reproducible=True)
    started = time.perf_counter()
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=classes)),
        get_items=lambda _: [Path(p) for p, _ in [*train, *valid]],
        splitter=lambda items: (
            [i for i, p in enumerate(items) if str(p) not in valid_paths],
            [i for i, p in enumerate(items) if str(p) in valid_paths],
        ),
        get_y=lambda p: label[str(p)],
        item_tfms=Resize(192, method="squish"),
        batch_tfms=aug_transforms(size=128, min_scale=0.75),
    )
    loaders = block.dataloaders(data, bs=64, num_workers=2, device=torch.device("cpu"))
    learn = vision_learner(
        loaders,
        arch,
        metrics=error_rate,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(weights)},
    )
    learn.fine_tune(5, 0.01)
    seconds = time.perf_counter() - started
    probs, targets = learn.get_preds(dl=loaders.valid)
    return {
        **scores(probs.numpy(), np.asarray(targets)),
        "train_seconds": round(seconds, 1),
        "epochs": 6,
        "size": "128 (items 192)",
        "bs": 64,
        "lr": 0.01,
    }


def probe_arm(data: Path, work: Path, arch: str, weights: Path) -> dict:
    """A logistic regression on the frozen body's pooled features."""
    import numpy as np
    import torch
    from PIL import Image
    from sklearn.linear_model import LogisticRegressionCV

    from cropdoc.model.timm_import import timm

    train, valid, _ = split(data, work / "cache")
    started = time.perf_counter()
    body = timm.create_model(
        arch, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(weights)}
    ).eval()
    config = timm.data.resolve_data_config({}, model=body)
    transform = timm.data.create_transform(**config)

    def features(rows) -> np.ndarray:
        out = []
        with torch.no_grad():
            for start in range(0, len(rows), 32):
                batch = [
                    transform(Image.open(p).convert("RGB")) for p, _ in rows[start : start + 32]
                ]
                out.append(body(torch.stack(batch)).numpy())
        return np.concatenate(out)

    x_train, x_valid = features(train), features(valid)
    y_train = np.array([c for _, c in train])
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    probe = LogisticRegressionCV(Cs=8, cv=5, max_iter=3000)
    probe.fit((x_train - mean) / std, y_train)
    seconds = time.perf_counter() - started
    probs = probe.predict_proba((x_valid - mean) / std)
    return {
        **scores(probs, [c for _, c in valid]),
        "train_seconds": round(seconds, 1),
        "size": config["input_size"][1],
        "C": float(probe.C_[0]),
    }


# PlantDoc's potato classes under PlantVillage's names (lab to field, the same diseases)
POTATO = {
    "Potato_leaf_early_blight": "Potato___Early_blight",
    "Potato_leaf_late_blight": "Potato___Late_blight",
    "Potato_leaf": "Potato___healthy",
}


def field_potato(data: Path, folder: Path) -> Path:
    """PlantDoc's potato photos (``train/`` and ``valid/``) as links under PlantVillage's
    class names in ``folder`` (the photos stay where they are)."""
    for split in ("train", "valid"):
        for theirs, ours in POTATO.items():
            target = folder / split / ours
            target.mkdir(parents=True, exist_ok=True)
            for photo in sorted((data / "plantdoc" / split / theirs).iterdir()):
                link = target / photo.name
                if not link.is_symlink():
                    link.symlink_to(photo.resolve())
    return folder


def lab_to_field(data: Path, work: Path, arch: str, weights: Path) -> dict:
    """A model trained on PlantVillage's lab photos of potato, scored on its own validation
    photos and on PlantDoc's field photos of the same classes; against a model trained on
    PlantDoc's field photos of potato (its training split), both with the defaults."""
    from cropdoc.config import TrainConfig
    from cropdoc.engine.trainer import train
    from cropdoc.evaluation.evaluate import evaluate

    field = field_potato(data, work / "field-potato")
    rows = {}
    for name, source in (("lab", data / "plantvillage-potato"), ("field", field)):
        run = work / f"{name}-run"
        if not (run / "model.json").exists():
            started = time.perf_counter()
            train(
                TrainConfig(
                    data=str(source),
                    arch=arch,
                    weights=str(weights),
                    cache=str(work / f"{name}-cache"),
                    out=str(run),
                )
            )
            rows[f"{name} seconds"] = round(time.perf_counter() - started, 1)
        own = evaluate(run, out=work / f"{name}-own")
        on_field = evaluate(run, field / "valid", out=work / f"{name}-on-field")
        rows[f"{name} model, its own validation photos"] = round(own["accuracy"], 4)
        rows[f"{name} model, field photos"] = round(on_field["accuracy"], 4)
        rows[f"{name} model, field photos' verdicts"] = on_field["verdicts"]
    return rows


def one_arm(root: Path, name: str, arm: str, work: Path, arch: str, weights: Path) -> dict:
    """Run ``arm`` on the set ``name`` of ``root`` (or the lab-to-field study) in this
    process; its result, saved in ``work/result.json``."""
    work.mkdir(parents=True, exist_ok=True)
    if name == LAB_TO_FIELD:
        found = lab_to_field(root, work, arch, weights)
    else:
        arms = {
            "cropdoc": cropdoc_arm,
            "cropdoc-128": lambda *a: cropdoc_arm(*a, **FASTAI_SIZES),
            "fastai": fastai_arm,
            "probe": probe_arm,
        }
        found = arms[arm](root / name, work, arch, weights)
    result = {**found, "peak_mb": round(peak_mb())}
    (work / "result.json").write_text(json.dumps(result, indent=1))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--arch", default=ARCH)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "cropdoc-real-photos")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--one", nargs=2, metavar=("SET", "ARM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    weights = args.weights or _default_weights(args.arch)
    if args.one:
        name, arm = args.one
        one_arm(args.data, name, arm, args.out / args.arch / name / arm, args.arch, weights)
        return 0
    results = {"machine": machine(), "arch": args.arch, "weights": str(weights), "sets": {}}
    for name in args.sets.split(","):
        results["sets"][name] = {}
        for arm in args.arms.split(",") if name != LAB_TO_FIELD else ["cropdoc"]:
            work = args.out / args.arch / name / arm
            if not (work / "result.json").exists():
                command = [
                    sys.executable,
                    __file__,
                    str(args.data),
                    "--arch",
                    args.arch,
                    "--weights",
                    str(weights),
                    "--out",
                    str(args.out),
                    "--one",
                    name,
                    arm,
                ]
                subprocess.run(command, check=True)
            found = json.loads((work / "result.json").read_text())
            results["sets"][name][arm] = found
            said = _line(found) if name != LAB_TO_FIELD else json.dumps(found)
            print(f"{name:20} {arm:8} {said}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(table(results))
    return 0


def _default_weights(arch: str) -> Path:
    """The real weights ``real_data.fetch_bodies`` has for ``arch``."""
    from real_data import fetch_bodies

    bodies = fetch_bodies(Path.home() / ".cache" / "cropdoc-real")
    if arch not in bodies:
        raise SystemExit(
            f"no real weights for {arch} here: give --weights (have: {', '.join(bodies)})"
        )
    return Path(bodies[arch])


def _line(found: dict) -> str:
    return (
        f"accuracy {found['accuracy']:.1%}, macro-F1 {found['macro_f1']:.3f}, "
        f"ECE {found['ece']:.3f}, {found['train_seconds']:.0f} s, {found['peak_mb']:.0f} MB"
    )


def table(results: dict) -> str:
    """The results as a markdown table, a row per set and arm."""
    lines = [
        f"machine: {results['machine']}; {results['arch']} from {results['weights']}",
        "",
        "| set | arm | accuracy | macro-F1 | ECE | seconds | peak MB | in scope "
        "| another set out of scope |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, arms in results["sets"].items():
        if name == LAB_TO_FIELD:
            continue  # its own rows, below
        for arm, r in arms.items():
            scope = (
                f"{r['in_scope']:.1%} | {r['other_out_of_scope']:.1%} ({r['other_set']})"
                if "in_scope" in r
                else "- | -"
            )
            lines.append(
                f"| {name} | {arm} | {r['accuracy']:.1%} | {r['macro_f1']:.3f} | {r['ece']:.3f} "
                f"| {r['train_seconds']:.0f} | {r['peak_mb']:.0f} | {scope} |"
            )
    study = results["sets"].get(LAB_TO_FIELD, {}).get("cropdoc")
    if study:
        lines += ["", "| lab to field (potato) | accuracy |", "| --- | --- |"]
        lines += [
            f"| {k} | {v:.1%} |"
            for k, v in study.items()
            if isinstance(v, float) and "seconds" not in k
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
