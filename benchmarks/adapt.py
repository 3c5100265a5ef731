"""A model that learns where it is used, measured on real photos (issue #41): a potato model
trained on PlantVillage's lab photos, scored on PlantDoc's potato field crops
(``plantdoc/valid``), then adapted to the field with no labels (its batch-norm statistics
from PlantDoc's potato training crops) and with K labelled field crops a class drawn from
``plantdoc/train`` (several draws); against a model trained on the same field crops alone
and one trained on the lab photos and those crops together.

    python benchmarks/adapt.py ../shared/real-photos [--shots 5,10,20] [--draws 2]
        [--lrs 0.001,0.01 [--lr-draws 1]] [--together-draws 1] [--out ~/.cache/cropdoc-adapt]
        [--lab-run RUN] [--probe] [--after-norms [--pseudo N]] [--blend SHARE] [--json]

Every model starts from the same ImageNet EfficientNet-Lite0 weights (``real_data.py``) with
cropdoc's defaults; adapting uses ``cropdoc adapt``'s. A draw's crops are split as ``adapt``
splits them (a fifth of each class validated on) and every arm of a draw trains and
validates on the same crops. Results are kept in ``OUT/results.json`` as they come, so a run
that stops goes on where it stopped. The photos stay in the shared folder (links).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from common import machine, report
from real_photos import field_potato

ARCH = "tf_efficientnet_lite0"
TOGETHER_SHOTS = 10  # the shots a class of the lab + field model, the rates and the mix


def draw(field: Path, shots: int, seed: int, folder: Path) -> Path:
    """``shots`` crops a class drawn (seeded) from the field's training crops, linked under
    ``folder/train`` and ``folder/valid`` as ``adapt`` would split them."""
    from cropdoc.adaptation.site import site_photos
    from cropdoc.data.layouts import Item

    rng = np.random.default_rng(seed)
    chosen = []
    for label_folder in sorted((field / "train").iterdir()):
        photos = sorted(label_folder.iterdir())
        for n in rng.permutation(len(photos))[:shots]:
            chosen.append(Item(photos[n], label_folder.name))
    pool = pool_of(folder)
    for item in chosen:
        (pool / item.label).mkdir(parents=True, exist_ok=True)
        link = pool / item.label / item.path.name
        if not link.is_symlink():
            link.symlink_to(item.path.resolve())
    classes = tuple(sorted(p.name for p in (field / "train").iterdir()))
    for item in site_photos(pool, classes, 0.2, seed):
        target = folder / item.split / item.label / item.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_symlink():
            target.symlink_to(item.path.resolve())
    return folder


def pool_of(draw_folder: Path) -> Path:
    """The folder of every crop of a draw (``draw`` links them there before splitting)."""
    return draw_folder.with_name(draw_folder.name + "-pool")


def score(run: Path, field: Path, work: Path) -> dict:
    """Accuracy, macro-F1 and verdicts of ``run`` on the field's validation crops."""
    from cropdoc.evaluation.evaluate import evaluate

    found = evaluate(run, field / "valid", out=work / "on-field")
    f1 = [row["f1"] for row in found["per_class"] if row["support"]]
    return {
        "accuracy": round(found["accuracy"], 4),
        "macro_f1": round(float(np.mean(f1)), 4),
        "verdicts": found["verdicts"],
    }


def trained(data: Path, out: Path, weights: Path, seed: int, cache: Path) -> Path:
    """A model trained with cropdoc's defaults on ``data`` (kept when already there)."""
    from cropdoc.config import TrainConfig
    from cropdoc.engine.trainer import train

    if not (out / "model.json").exists():
        settings = dict(weights=str(weights), seed=seed, cache=str(cache), out=str(out))
        train(TrainConfig(data=str(data), arch=ARCH, **settings))
    return out


def together(lab: Path, field_draw: Path, folder: Path) -> Path:
    """A manifest of the lab photos (their own split) and a draw's field crops (theirs)."""
    from cropdoc.adaptation.site import manifest_text
    from cropdoc.data.layouts import discover

    items = [*discover(lab).items, *discover(field_draw).items]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "together.csv").write_text(manifest_text([i for i in items if i.split != "test"]))
    return folder / "together.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--shots", default="5,10,20")
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--lrs", default="0.001,0.01", help="adapt's rate tried on 10 a class")
    parser.add_argument("--lr-draws", type=int, default=1, help="the draws --lrs is tried on")
    parser.add_argument(
        "--together-draws", type=int, default=1, help="the draws the lab + field model trains on"
    )
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "cropdoc-adapt")
    parser.add_argument("--lab-run", type=Path, default=None)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--probe", action="store_true", help="add the head-refit baseline")
    parser.add_argument(
        "--after-norms",
        action="store_true",
        help="add adapt from the norms-only model (the field's unlabelled crops first)",
    )
    parser.add_argument(
        "--pseudo",
        type=int,
        default=0,
        help="with --after-norms: add N pseudo-labelled field crops a class to its training",
    )
    parser.add_argument(
        "--blend",
        type=float,
        default=0.0,
        help="add adapt's weights averaged with its start's, this share of adapt's (WiSE-FT)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.pseudo and not args.after_norms:
        parser.error("--pseudo needs --after-norms: its teacher is the norms, then adapted model")
    if args.blend and not 0 < args.blend < 1:
        parser.error(f"--blend is a share of adapt's weights, between 0 and 1, not {args.blend:g}")
    from real_photos import _default_weights

    from cropdoc import adapt, adapt_norms, show_output

    show_output(True)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    weights = args.weights or _default_weights(ARCH)
    field = field_potato(args.data, out / "field-potato")
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}

    def row(name: str, make, *args, **options) -> None:
        """Make the model of ``name`` with ``make(*args, **options)`` (unless it is in the
        results already), score it on the field crops and keep the result."""
        if name not in results:
            started = time.perf_counter()
            run = make(*args, **options)
            seconds = round(time.perf_counter() - started, 1)
            results[name] = {**score(run, field, out / "scores" / name), "seconds": seconds}
            results_file.write_text(json.dumps(results, indent=1))
        print(f"{name:40} {json.dumps(results[name])}", flush=True)

    lab = args.lab_run or out / "lab-run"
    lab_data = args.data / "plantvillage-potato"
    row("lab", trained, lab_data, lab, weights, 42, out / "cache")
    norms = out / "norms"
    row("lab, norms on field (no labels)", _norms, adapt_norms, lab, field, norms)
    for shots in [int(s) for s in args.shots.split(",")]:
        for seed in range(args.draws):
            crops = draw(field, shots, seed, out / "draws" / f"{shots}-{seed}")
            tag = f"{shots} a class, draw {seed}"
            runs = out / "runs" / f"{shots}-{seed}"
            row(f"lab, adapted: {tag}", _adapted, adapt, lab, crops, runs / "adapt", seed)
            row(f"field only: {tag}", trained, crops, runs / "field", weights, seed, runs)
            if args.after_norms:
                name = f"norms, then adapted: {tag}"
                row(name, _adapted, adapt, norms, crops, runs / "norms-adapt", seed)
                if args.pseudo:
                    name = f"norms, then adapted, {args.pseudo} pseudo a class: {tag}"
                    row(name, _pseudo_adapted, adapt, norms, field, crops, args.pseudo, runs, seed)
            if args.blend:
                share = f"{args.blend:g}"
                row(f"lab, adapted, blended {share}: {tag}", blended, lab, runs / "adapt",
                    args.blend, runs / f"blend{share}")  # fmt: skip
                if args.after_norms:
                    row(f"norms, then adapted, blended {share}: {tag}", blended, norms,
                        runs / "norms-adapt", args.blend, runs / f"norms-blend{share}")  # fmt: skip
            if args.probe:  # every crop of the draw
                name = f"head refit: {tag}"
                if name not in results:
                    results[name] = head_refit(lab, pool_of(crops), field)
                    results_file.write_text(json.dumps(results, indent=1))
                print(f"{name:40} {json.dumps(results[name])}", flush=True)
            if shots != TOGETHER_SHOTS:
                continue
            if seed < args.lr_draws:
                for lr in [float(x) for x in args.lrs.split(",") if x]:
                    name = f"lab, adapted, lr {lr:g}: {tag}"
                    row(name, _adapted, adapt, lab, crops, runs / f"lr{lr:g}", seed, lr=lr)
            if seed < args.together_draws:
                manifest = together(lab_data, crops, runs)
                row(f"lab + field: {tag}", trained, manifest, runs / "all", weights, seed,
                    out / "cache")  # fmt: skip
            if seed == 0:
                row(f"lab, adapted, mix 1: {tag}", _adapted, adapt, lab, crops, runs / "mix", 0,
                    mix=1)  # fmt: skip
    summary = {"machine": machine(), "arch": ARCH, "weights": str(weights), "rows": results}
    report(summary, args.json)


def pseudo_labelled(teacher: Path, field: Path, crops: Path, per_class: int, out: Path) -> Path:
    """A manifest of the draw's labelled crops (their own split) and, to train on, the
    ``per_class`` field training crops outside the draw that ``teacher`` is surest of among
    those it calls each class, labelled with its answer (their own labels unused; how many
    of those answers are right is written beside it)."""
    from cropdoc.adaptation.site import manifest_text
    from cropdoc.data.layouts import Item, discover
    from cropdoc.inference.predict import predict

    drawn = {p.resolve() for p in pool_of(crops).glob("*/*")}
    pool = sorted(p for p in (field / "train").glob("*/*") if p.resolve() not in drawn)
    found = predict([teacher], pool, quality=False)
    answer = found.probs.argmax(1)
    surest_first = np.argsort(-found.probs.max(1), kind="stable")
    chosen = []
    for c, label in enumerate(found.classes):
        surest = [n for n in surest_first if answer[n] == c][:per_class]
        chosen += [Item(Path(found.paths[n]), label, "train") for n in surest]
    right = sum(Path(item.path).parent.name == item.label for item in chosen)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pseudo.json").write_text(json.dumps({"chosen": len(chosen), "right": right}))
    (out / "labels.csv").write_text(manifest_text([*discover(crops).items, *chosen]))
    return out / "labels.csv"


def blended(start: Path, adapted: Path, share: float, target: Path) -> Path:
    """A bundle whose every float tensor (batch-norm statistics too) is ``share`` of
    ``adapted``'s and the rest ``start``'s, with ``adapted``'s trust file: weight-space
    ensembling of a fine-tune and its start (WiSE-FT, Wortsman et al. 2022)."""
    from safetensors.torch import load_file

    from cropdoc.model.build import load_bundle, save_bundle
    from cropdoc.model.scoring import TRUST_FILE

    if not (target / "model.json").exists():
        begun = load_file(start / "model.safetensors")  # a bundle's weights: its state dict
        model, meta = load_bundle(adapted)
        state = {
            k: share * v + (1 - share) * begun[k] if v.is_floating_point() else v
            for k, v in model.state_dict().items()
        }
        model.load_state_dict(state)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(adapted / TRUST_FILE, target / TRUST_FILE)
        save_bundle(target, model.eval(), meta)
    return target


def head_refit(lab: Path, pool: Path, field: Path) -> dict:
    """A baseline that does not fine-tune: a logistic regression (C = 1) fitted on the lab
    model's penultimate features of the draw's crops (all of them: it picks no epoch),
    scored on the field's validation crops."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    train_x, train_y = _features(lab, pool)
    valid_x, valid_y = _features(lab, field / "valid")
    found = LogisticRegression(C=1.0, max_iter=2000).fit(train_x, train_y).predict(valid_x)
    f1 = f1_score(valid_y, found, labels=sorted(set(valid_y)), average="macro", zero_division=0)
    return {
        "accuracy": round(float(np.mean(found == valid_y)), 4),
        "macro_f1": round(float(f1), 4),
    }


def _features(run: Path, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's penultimate features of a class-folder layout's photos, and labels."""
    import torch

    from cropdoc.data.images import load_image
    from cropdoc.data.loader import make_canvas
    from cropdoc.model.archs import features_logits_levels
    from cropdoc.model.build import load_bundle
    from cropdoc.model.inputs import validation_input

    model, meta = load_bundle(run)
    photos = sorted(p for p in folder.glob("*/*") if p.is_file())
    labels = np.array([meta.classes.index(p.parent.name) for p in photos])
    parts = []
    with torch.no_grad():
        for start in range(0, len(photos), 32):
            pixels = [load_image(p, max_size=meta.cache_size) for p in photos[start : start + 32]]
            canvas, sizes = make_canvas(pixels)
            x = validation_input(meta, canvas, sizes)
            parts.append(features_logits_levels(model, x, ())[0].numpy())
    return np.concatenate(parts), labels


def _norms(adapt_norms, lab: Path, field: Path, target: Path) -> Path:
    if not (target / "model.json").exists():
        adapt_norms(lab, field / "train", target)
    return target


def _adapted(adapt, lab: Path, crops: Path, target: Path, seed: int, **options) -> Path:
    if not (target / "model.json").exists():
        adapt(lab, crops, target, seed=seed, **options)
    return target


def _pseudo_adapted(adapt, norms: Path, field: Path, crops: Path, per_class: int, runs: Path,
                    seed: int) -> Path:  # fmt: skip
    """``adapt`` from the norms model on the draw's crops and the pseudo-labels of its
    ``norms-adapt`` model (the teacher)."""
    target = runs / f"pseudo-{per_class}"
    if not (target / "model.json").exists():
        teacher = runs / "norms-adapt"
        manifest = pseudo_labelled(teacher, field, crops, per_class, runs / "pseudo")
        adapt(norms, manifest, target, seed=seed)
    return target


if __name__ == "__main__":
    main()
