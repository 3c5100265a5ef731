"""The ``cropdoc`` command: parse arguments, call the Python API, print the result.

Heavy modules (numpy, Pillow, torch, timm) are imported inside the commands, so
``cropdoc --help`` starts quickly.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from cropdoc import __version__
from cropdoc.config import TrainConfig
from cropdoc.errors import UserError

app = typer.Typer(
    name="cropdoc",
    help="Train, compare, explain and deploy crop-disease image classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
DataArg = Annotated[Path, typer.Argument(help="Dataset folder or CSV manifest.")]
TARGET_METRICS = ("_error_rate", "_mae")  # the endings of a multi-target run's other metrics


def _emit(result: dict, as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps(result, indent=1, ensure_ascii=False))
    else:
        print(text)


def _version(value: bool) -> None:
    if value:
        print(f"cropdoc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Train, compare, explain and deploy crop-disease image classifiers."""


@app.command()
def scan(data: DataArg, as_json: JsonOpt = False) -> None:
    """List a dataset's classes, image counts, unlabelled test images and skipped files."""
    from cropdoc.data.layouts import discover

    summary = discover(data).summary()
    _emit(summary, as_json, _describe(summary))


def _describe(summary: dict) -> str:
    lines = [
        f"{summary['root']} ({summary['layout']} layout): {summary['labelled']} labelled "
        f"images in {len(summary['classes'])} classes"
    ]
    width = max(len(c) for c in summary["classes"])
    lines += [f"  {c:<{width}}  {n:>6}" for c, n in summary["counts"].items()]
    if summary["unlabelled_test"]:
        lines.append(f"unlabelled test images: {summary['unlabelled_test']}")
    lines += [f"skipped {s['path']}: {s['reason']}" for s in summary["skipped"]]
    lines += [f"warning: {w}" for w in summary["warnings"]]
    return "\n".join(lines)


@app.command()
def prepare(
    data: DataArg,
    cache: Annotated[
        Path | None,
        typer.Option(
            help="Cache folder (default: keyed, under $CROPDOC_CACHE or ~/.cache/cropdoc)."
        ),
    ] = None,
    size: Annotated[
        int, typer.Option(help="Longer side of the cached images; 0 keeps full resolution.")
    ] = 256,
    workers: Annotated[
        int | None, typer.Option(help="Decoding processes (default: all cores).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Decode and shrink every image once into a fast, memory-mapped cache."""
    from cropdoc.data.cache import prepare as run_prepare

    result = run_prepare(data, cache=cache, size=size, workers=workers)
    summary = result.summary()
    lines = [f"bad image {e['path']}: {e['reason']}" for e in summary["errors"]]
    lines += [f"skipped {s['path']}: {s['reason']}" for s in summary["skipped"]]
    lines.append(
        f"prepared {summary['cached']} of {summary['images']} images into {summary['cache']} "
        f"({summary['decoded']} decoded, {summary['reused']} reused, "
        f"{len(summary['errors'])} bad) in {summary['seconds']:.1f}s"
    )
    _emit(summary, as_json, "\n".join(lines))


@app.command()
def show(
    data: DataArg,
    per_label: Annotated[int, typer.Option(help="Images per label.")] = 3,
    out: Annotated[Path, typer.Option(help="The PNG to write.")] = Path("samples.png"),
    seed: Annotated[int, typer.Option(help="Seed of the random choice.")] = 42,
    as_json: JsonOpt = False,
) -> None:
    """Save a grid of random images per label, with the label names and counts."""
    from cropdoc.data.show import show_samples

    result = show_samples(data, out=out, per_label=per_label, seed=seed)
    labels = ", ".join(f"{k} ({v})" for k, v in result["classes"].items())
    _emit(result, as_json, f"labels: {labels}\nwrote {result['out']}")


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder to create.")],
    per_class: Annotated[int, typer.Option(help="Training images per class.")] = 50,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed draws the same data.")] = 0,
    size: Annotated[
        str | None,
        typer.Option(
            help="HxW of large field photos, e.g. 1536x2048 (default: 640x480 close-ups)."
        ),
    ] = None,
    lesion_scale: Annotated[
        float | None, typer.Option(help="Pixels per lesion unit (default 1.6; field photos 2.0).")
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="Comma-separated subset of the classes (default: all).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Draw the demo dataset: leaf photos with small lesions, in Kaggle paddy layout."""
    from cropdoc.config import parse_size
    from cropdoc.data.demo import make_demo_data

    result = make_demo_data(
        out,
        per_class=per_class,
        seed=seed,
        size=parse_size(size) if size else None,
        lesion_scale=lesion_scale,
        classes=[c.strip() for c in classes.split(",") if c.strip()] if classes else None,
    )
    _emit(
        result,
        as_json,
        f"demo dataset: {result['root']} ({result['train_images']} training "
        f"and {result['test_images']} test images; masks in {result['masks']})",
    )


@app.command()
def fetch(
    source: Annotated[str, typer.Argument(help="kaggle:<competition>, or a downloaded zip.")],
    dest: Annotated[Path, typer.Option(help="Folder to unpack into (new or empty).")],
    as_json: JsonOpt = False,
) -> None:
    """Download a Kaggle competition's data (or unpack its zip) into a folder."""
    from cropdoc.data.fetch import fetch as run_fetch

    result = run_fetch(source, dest)
    _emit(result, as_json, f"unpacked {result['files']} files into {result['dest']}")


def _train_config(options: dict) -> TrainConfig:
    """The training settings among a command's options."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: str(v) if isinstance(v, Path) else v for k, v in options.items() if k in names}
    return TrainConfig.from_dict({"data": "", "out": "", **values})


def training_options(*, exclude: tuple[str, ...] = ()):
    """Decorate a command ``f(own..., **options)`` so that it also takes every training
    option of ``TrainConfig`` (help and defaults from its fields) except ``exclude``: the
    command's own parameters come first, then the training options, then ``as_json``."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    generated = [
        inspect.Parameter(f.name, keyword, default=f.default, annotation=_option(f))
        for f in dataclasses.fields(TrainConfig)
        if "help" in f.metadata and f.name not in exclude
    ]

    def decorate(command):
        own = inspect.signature(command, eval_str=True).parameters.values()
        own = [p.replace(kind=keyword) for p in own if p.kind != p.VAR_KEYWORD]
        last = [p for p in own if p.name == "as_json"]
        first = [p for p in own if p.name != "as_json"]
        command.__signature__ = inspect.Signature([*first, *generated, *last])
        return command

    return decorate


def _option(setting: dataclasses.Field):
    """The typer annotation of a ``TrainConfig`` field: its type and help."""
    kind = setting.metadata["kind"] or type(setting.default)
    return Annotated[kind, typer.Option(help=setting.metadata["help"])]


BsOpt = Annotated[int, typer.Option(help="Batch size.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]


@app.command()
def models(
    filter_text: Annotated[str, typer.Option("--filter", help="Only names containing this.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """List the blog's preset architectures (params, GMACs) and other timm names."""
    from cropdoc.models import PRESETS, count, list_models

    names = list_models(filter_text)
    presets = [count(n) for n in names if n in PRESETS]
    others = [n for n in names if n not in PRESETS]
    result = {
        "presets": [
            {
                "name": i.name,
                "params_m": round(i.params_m, 2),
                "gmacs": round(i.gmacs, 2),
                "input_size": list(i.input_size),
                "note": PRESETS[i.name],
            }
            for i in presets
        ],
        "other_timm_models": others,
    }
    lines = [f"{'architecture':<24} {'params':>8} {'GMACs':>7}  {'size':>7}  note"]
    lines += [
        f"{p['name']:<24} {p['params_m']:>7.1f}M {p['gmacs']:>7.2f}  "
        f"{p['input_size'][0]:>3}x{p['input_size'][1]:<3}  {p['note']}"
        for p in result["presets"]
    ]
    if others:
        lines.append(
            f"other timm models: {', '.join(others[:60])}"
            + (f" ... ({len(others)} in all)" if len(others) > 60 else "")
        )
    _emit(result, as_json, "\n".join(lines))


@app.command("lr-find")
@training_options(exclude=("lr", "epochs", "progressive", "accum", "sync_bn"))
def lr_find_command(
    data: DataArg,
    num_it: Annotated[int, typer.Option(help="Steps of the range test.")] = 100,
    out: Annotated[Path, typer.Option(help="The plot to write.")] = Path("lr_find.png"),
    as_json: JsonOpt = False,
    **options,
) -> None:
    """Learning-rate range test: prints the valley and slide suggestions, saves the plot."""
    from cropdoc.engine.lr_find import plot
    from cropdoc.engine.trainer import Trainer

    config = _train_config({**options, "data": data})  # here --out is the plot, not a run
    found = Trainer(config).find_lr(num_it=num_it)
    plot(found, out)
    result = {**found.summary(), "plot": str(out)}
    _emit(result, as_json, f"valley: {found.valley:.2e}\nslide:  {found.slide:.2e}\nplot: {out}")


@app.command()
@training_options()
def train(
    data: Annotated[Path | None, typer.Argument(help="Dataset folder or CSV manifest.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/ARCH-N).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this interrupted run.")] = None,
    as_json: JsonOpt = False,
    **options,
) -> None:
    """Fine-tune (or train from scratch) a timm model; writes a run folder and a bundle."""
    from cropdoc.engine import distributed, trainer

    if resume is not None:
        result = trainer.resume(resume)
    else:
        if data is None:
            raise UserError("give a dataset (cropdoc train DATA ...) or --resume RUN")
        config = _train_config({**options, "data": data, "out": out})
        result = trainer.train(config)
    if not distributed.is_main():
        return  # across processes, the first one reports
    best = result["best"]
    _emit(
        result,
        as_json,
        f"best epoch {best['epoch']}: error_rate {best['error_rate']:.4f}, "
        f"accuracy {best['accuracy']:.4f}"
        + "".join(f", {k} {v:.4f}" for k, v in best.items() if k.endswith(TARGET_METRICS))
        + f"\nrun folder: {result['run']}",
    )


@app.command()
@training_options(exclude=("arch",))
def compare(
    ctx: typer.Context,
    data: DataArg,
    archs: Annotated[str, typer.Option(help="Architectures to compare, comma-separated.")],
    one: Annotated[
        list[str] | None,
        typer.Option("--set", help="A setting of one architecture: ARCH.KEY=VALUE."),
    ] = None,
    sizes: Annotated[
        str | None,
        typer.Option(help="Resolution study: one architecture at each size, e.g. 128,256."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Compare folder (default runs/compare-DATA); reuse to resume."),
    ] = None,
    as_json: JsonOpt = False,
    **options,
) -> None:
    """Train several architectures on the same split; rank them on a leaderboard."""
    from cropdoc.evaluation import compare as comparing

    names = [a.strip() for a in archs.split(",") if a.strip()]
    overrides: dict[str, dict] = {}
    for text in one or []:
        arch, key, value = comparing.parse_override(text, names)
        overrides.setdefault(arch, {})[key] = value
    steps = [x.strip() for x in (sizes or "").split(",") if x.strip()]
    # only the options typed on the command line apply to every run (typer bundles its own
    # click: compare the parameter source by name)
    given = {k for k in options if ctx.get_parameter_source(k).name == "COMMANDLINE"}
    config = vars(_train_config({**options, "data": data}))
    settings = {k: v for k, v in config.items() if k in given}
    result = comparing.compare(data, names, settings, overrides, out, steps)
    table = Path(result["files"]["leaderboard.md"]).read_text(encoding="utf-8")
    _emit(result, as_json, f"{table}\nleaderboard and plots: {result['compare']}")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder (or bundle, with DATA).")],
    data: Annotated[
        Path | None, typer.Argument(help="Another labelled dataset (default: the run's split).")
    ] = None,
    tta: Annotated[bool, typer.Option(help="Also with test-time augmentation.")] = False,
    bs: BsOpt = 64,
    device: DeviceOpt = "auto",
    out: Annotated[Path | None, typer.Option(help="Folder (default RUN/evaluation).")] = None,
    ood: Annotated[
        Path | None,
        typer.Option(help="Photos the model should not know: how well they are flagged."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Confusion matrix, per-class metrics, top losses, error rate (and TTA), calibration,
    selective prediction, and with --ood the out-of-scope score's AUROC."""
    from cropdoc.evaluation.evaluate import evaluate as run_evaluate

    result = run_evaluate(run, data, tta=tta, out=out, bs=bs, device=device, ood=ood)
    lines = [f"{result['images']} images: error rate {result['error_rate']:.4f}"]
    if tta:
        lines[0] += f", with TTA {result['error_rate_tta']:.4f}"
    c = result["calibration"]
    lines.append(
        f"calibration (temperature {c['temperature']:.3f}): NLL {c['nll'][0]:.4f} -> "
        f"{c['nll'][1]:.4f}, ECE {c['ece'][0]:.4f} -> {c['ece'][1]:.4f}; verdicts: "
        + ", ".join(f"{k} {v}" for k, v in result["verdicts"].items())
    )
    if ood is not None:
        o = result["ood"]
        lines.append(
            f"out of scope: AUROC {o['auroc']:.4f}, FPR at 95% recall "
            f"{o['fpr_at_95_recall']:.4f}, flagged {o['flagged_out_of_scope']:.1%} of "
            f"{o['out_of_scope_images']} (and {o['flagged_in_scope']:.1%} in scope)"
        )
    lines += [f"{'class':<28} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>7}"]
    lines += [
        f"{r['class']:<28} {r['precision']:>9.3f} {r['recall']:>7.3f} {r['f1']:>6.3f} "
        f"{r['support']:>7}"
        for r in result["per_class"]
    ]
    for name, found in result.get("targets", {}).items():  # a multi-target model's others
        metric = "mae" if "mae" in found else "error_rate"
        value = found[metric]
        shown = "no value" if value is None else f"{metric.replace('_', ' ')} {value:.4f}"
        lines.append(f"{name}: {shown} ({found['images']} images)")
    lines.append(f"report: {Path(result['files']['confusion_matrix.png']).parent / 'report.md'}")
    _emit(result, as_json, "\n".join(lines))


@app.command()
@training_options(exclude=("fold",))
def doctor(
    ctx: typer.Context,
    data: DataArg,
    folds: Annotated[
        int, typer.Option(help="K-fold training for label errors and outliers (0: skip it).")
    ] = 5,
    out: Annotated[Path, typer.Option(help="Folder for the report; reuse to resume.")] = Path(
        "doctor"
    ),
    similarity: Annotated[
        float, typer.Option(help="Thumbnail correlation from which photos are near copies.")
    ] = 0.8,
    apply: Annotated[
        Path | None,
        typer.Option(help="Write a cleaned manifest from this decisions CSV (keep/drop/relabel)."),
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="The manifest --apply writes (default OUT/clean.csv).")
    ] = None,
    review: Annotated[
        bool, typer.Option(help="Serve a page to review the findings (saves OUT/decisions.csv).")
    ] = False,
    host: Annotated[str, typer.Option(help="Address of --review (loopback).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of --review.")] = 8001,
    as_json: JsonOpt = False,
    **options,
) -> None:
    """Find duplicates, leaks between splits, likely label errors and outliers; review
    them on a page; write a cleaned manifest (your files are never changed)."""
    from cropdoc.extras import require

    if apply is not None:
        from cropdoc.audit.decisions import apply_decisions

        result = apply_decisions(data, apply, manifest or out / "clean.csv")
        _emit(
            result,
            as_json,
            f"wrote {result['manifest']}: {result['photos']} photos ({result['dropped']} "
            f"dropped, {result['relabelled']} relabelled); train on it: cropdoc train "
            f"{result['manifest']}",
        )
        return
    require("doctor", "cropdoc doctor")
    if review:
        require("serve", "cropdoc doctor --review")
    from cropdoc.audit.doctor import doctor as run_doctor

    given = {k for k in options if ctx.get_parameter_source(k).name == "COMMANDLINE"}
    config = vars(_train_config({**options, "data": data}))
    settings = {k: v for k, v in config.items() if k in given}
    if not (review and (out / "findings.json").exists()):
        result = run_doctor(data, out, folds, settings, similarity)
        counts = result.summary["counts"]
        text = ", ".join(f"{n} {kind}" for kind, n in counts.items())
        lines = [f"{result.summary['photos']} photos: {text}"]
        lines += [f"warning: {w}" for w in result.summary.get("warnings", [])]
        lines.append(f"report: {out / 'report.md'}; issues: {out / 'issues.csv'}")
        if not review:
            _emit(result.to_dict(), as_json, "\n".join(lines))
            return
        print("\n".join(lines), file=sys.stderr)
    import uvicorn

    from cropdoc.audit.review import create_review_app
    from cropdoc.serve.app import check_address

    check_address(host, port)
    app = create_review_app(out)
    print(f"cropdoc: review the findings on http://{host}:{port}/ (Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@app.command()
def calibrate(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    data: Annotated[
        Path | None,
        typer.Argument(help="Another labelled folder to calibrate on (default: the run's split)."),
    ] = None,
    keep: Annotated[
        float, typer.Option(help="Share of in-scope photos the out-of-scope threshold passes.")
    ] = 0.95,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Refit the temperature, the confidence floor and the out-of-scope threshold."""
    from cropdoc.trust.fit import fit_trust

    if not 0.5 <= keep < 1:
        raise UserError(f"--keep must be from 0.5 to below 1, not {keep}")
    result = fit_trust(run, data, keep=keep, device=device)
    _emit(
        result,
        as_json,
        f"temperature {result['temperature']:.3f} (ECE {result['ece'][0]:.4f} -> "
        f"{result['ece'][1]:.4f} on {result['images']} images), min confidence "
        f"{result['min_confidence']:.3f}, out-of-scope threshold {result['ood_threshold']:.4f}"
        f"\nwrote {run / 'model.json'}",
    )


@app.command()
def explain(
    model: Annotated[Path, typer.Argument(help="Run folder or bundle.")],
    images: Annotated[
        list[Path] | None, typer.Argument(help="Images or folders (with --score: optional).")
    ] = None,
    method: Annotated[
        str,
        typer.Option(help="gradcam, gradcam++, hirescam, layercam, eigencam, scorecam, attention."),
    ] = "gradcam",
    class_name: Annotated[
        str | None, typer.Option("--class", help="Class to explain (default: the predicted).")
    ] = None,
    target: Annotated[
        str, typer.Option(help="A multi-target model's target to explain, e.g. variety.")
    ] = "label",
    out: Annotated[Path | None, typer.Option(help="Folder (default MODEL/explain).")] = None,
    score: Annotated[
        Path | None,
        typer.Option(help="Lesion-mask folder: print the pointing game and heat inside them."),
    ] = None,
    dilate: Annotated[int, typer.Option(help="Pointing-game tolerance in pixels.")] = 8,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Where the model looks: heatmaps over the photos, or a localisation score on masks."""
    from cropdoc.inference import explain as explaining

    if score is not None:
        result = explaining.score(model, score, images or None, method, dilate, device)
        lines = [f"{'class':<28} {'images':>6} {'pointing':>8} {'energy':>7} {'chance':>7}"]
        rows = [*result["per_class"].items(), ("all", result)]
        lines += [
            f"{name:<28} {r['images']:>6} {r['pointing_game']:>8.3f} "
            f"{r['energy_inside']:>7.3f} {r['chance']:>7.3f}"
            for name, r in rows
        ]
        _emit(result, as_json, "\n".join(lines))
        return
    if not images:
        raise UserError("give images or folders to explain (or --score MASK_DIR)")
    items = explaining.explain(model, images, method, class_name, device, target)
    if not items:
        raise UserError("no images found in the paths given")
    folder = out or (model / "explain" if model.is_dir() else Path("explain"))
    result = {"method": method, "images": [], "index": None}
    for n, item in enumerate(items):
        figure = explaining.save_figure(item, folder / f"{n:04d}-{Path(item.path).stem}.png")
        result["images"].append(
            {"path": item.path, "target": item.target, "top": item.top, "figure": str(figure)}
        )
    result["index"] = str(explaining.save_index(items, folder / "index.png"))
    lines = [
        f"{r['path']}: {r['top'][0][0]} {r['top'][0][1]:.2f} -> {r['figure']}"
        for r in result["images"]
    ]
    _emit(result, as_json, "\n".join([*lines, f"index: {result['index']}"]))


@app.command()
def predict(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Model folders (run folders or bundles), then images, folders or CSVs of paths."
        ),
    ],
    tta: Annotated[bool, typer.Option(help="Average over flipped and augmented views.")] = False,
    top_k: Annotated[int, typer.Option(help="Classes to report per image.")] = 3,
    out: Annotated[
        Path | None, typer.Option(help="preds.csv, preds.json or submission.csv.")
    ] = None,
    bs: BsOpt = 64,
    ensemble_weights: Annotated[
        str | None, typer.Option(help="Weights of the models, e.g. 2,1,1.")
    ] = None,
    submission: Annotated[
        Path | None,
        typer.Option(help="Kaggle sample_submission.csv: write image_id,label in its order."),
    ] = None,
    images: Annotated[Path | None, typer.Option(help="Folder of the submission's images.")] = None,
    submit_target: Annotated[
        str, typer.Option(help="The target a multi-target model's submission answers.")
    ] = "label",
    device: DeviceOpt = "auto",
    runtime: Annotated[
        str, typer.Option(help="torch, or onnx (an exported model; no torch).")
    ] = "torch",
    as_json: JsonOpt = False,
) -> None:
    """Diagnose photos with one model or an ensemble; or write a Kaggle submission."""
    if runtime not in ("torch", "onnx"):
        raise UserError("--runtime must be torch or onnx")
    models, inputs = _models_then_inputs(paths)
    if submission is not None and (images is None or inputs):
        raise UserError("--submission needs --images FOLDER and no other inputs")
    if runtime == "onnx":
        if len(models) != 1 or ensemble_weights:
            raise UserError("--runtime onnx takes one model (ensembles run with --runtime torch)")
        from cropdoc.inference.onnx_runtime import onnx_scorer

        scorer = onnx_scorer(models[0], tta=tta)
    else:
        from cropdoc.inference.predict import torch_scorer

        try:
            weights = [float(w) for w in ensemble_weights.split(",")] if ensemble_weights else None
        except ValueError:
            raise UserError("--ensemble-weights takes numbers separated by commas") from None
        scorer = torch_scorer(models, weights, device, tta)
    from cropdoc.inference import predictions as run

    if submission is not None:
        predict_images = functools.partial(run.predict_paths, scorer=scorer, bs=bs)
        written = run.write_submission(
            predict_images, submission, images, out or Path("submission.csv"), submit_target
        )
        _emit({"submission": str(written)}, as_json, f"wrote {written}")
        return
    predictions = run.predict_paths(inputs, scorer, bs)
    _show_predictions(predictions, top_k, out, as_json, run.write_predictions)


def _models_then_inputs(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """The leading model folders (holding model.json) or .onnx files, and the rest."""
    models = []
    for path in paths:
        if not ((path / "model.json").is_file() or path.suffix == ".onnx"):
            break
        models.append(path)
    if not models:
        raise UserError(
            "start with at least one model (a folder holding model.json, or "
            "a .onnx file), then the images"
        )
    return models, paths[len(models) :]


def _verdict_text(row: dict) -> str:
    if row["verdict"] == "out_of_scope":
        return f"out of scope (score {row['ood_score']:.2f}): not a photo this model knows"
    if row["verdict"] == "uncertain":
        return f"not sure ({row['confidence']:.2f}): take a closer photo of the lesion"
    return f"{row['top'][0]['label']} ({row['confidence']:.2f})"


def _answer_text(answer: dict) -> str:
    """A multi-target model's other answer in a few words."""
    if "value" in answer:
        return f"{answer['value']:.4g}"
    return f"{answer['label']} ({answer['prob']:.2f})"


def _show_predictions(predictions, top_k: int, out, as_json: bool, write) -> None:
    result = {
        "classes": predictions.classes,
        "predictions": predictions.top(top_k),
        "errors": [{"path": p, "reason": r} for p, r in predictions.errors],
    }
    if out is not None:
        result["out"] = str(write(predictions, out, top_k))
    lines = [
        f"{row['path']}: {_verdict_text(row)}; "
        + ", ".join(f"{t['label']} {t['prob']:.3f}" for t in row["top"])
        + "".join(f"; {name} {_answer_text(a)}" for name, a in row.get("targets", {}).items())
        for row in result["predictions"]
    ]
    lines += [f"unreadable {e['path']}: {e['reason']}" for e in result["errors"]]
    if out is not None:
        lines.append(f"wrote {out}")
    _emit(result, as_json, "\n".join(lines))


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="Run folder or bundle.")],
    format: Annotated[str, typer.Option("--format", help="Only onnx for now.")] = "onnx",
    int8: Annotated[bool, typer.Option(help="Quantise to int8 (static, calibrated).")] = False,
    calibrate: Annotated[
        list[Path] | None,
        typer.Option(help="Images or folders to calibrate int8 on (e.g. the training images)."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="The file to write.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a model to ONNX (dynamic batch; dynamic size for CNNs) and check parity."""
    if format != "onnx":
        raise UserError(f"--format {format} is not supported: use onnx")
    from cropdoc.inference.export import export_onnx

    result = export_onnx(model, out, int8=int8, calibrate=calibrate)
    lines = [f"wrote {result['onnx']}"]
    lines += [
        f"parity at {p['size'][0]}x{p['size'][1]}: max |logit diff| "
        f"{p['max_abs_diff']:.2e}, top-1 agreement {p['top1_agreement']:.0%}"
        + "".join(f"; {name} max |diff| {d:.2e}" for name, d in p.get("targets", {}).items())
        for p in result["parity"]
    ]
    _emit(result, as_json, "\n".join(lines))


@app.command()
def serve(
    model: Annotated[
        Path, typer.Argument(help="Run folder, bundle, or .onnx with --runtime onnx.")
    ],
    host: Annotated[
        str, typer.Option(help="Address to bind (loopback unless you say).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    runtime: Annotated[str, typer.Option(help="torch or onnx.")] = "torch",
    workers: Annotated[int, typer.Option(help="Server processes.")] = 1,
    threads: Annotated[
        int | None, typer.Option(help="Model threads per process (default: cores / workers).")
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload (413 above).")] = 10.0,
    max_batch: Annotated[
        int, typer.Option(help="Most images per model call (1: no batching).")
    ] = 16,
    batch_wait_ms: Annotated[float, typer.Option(help="How long a batch waits to fill.")] = 5.0,
    max_inflight: Annotated[
        int, typer.Option(help="Images in flight per process (503 above).")
    ] = 64,
    body_timeout: Annotated[
        float, typer.Option(help="Seconds an upload may take to arrive (408 above).")
    ] = 30.0,
) -> None:
    """Serve diagnoses over HTTP: POST /predict, GET /health, /model, the page at /."""
    import os

    from cropdoc.extras import require

    require("serve", "cropdoc serve")
    import uvicorn

    from cropdoc.serve.app import Settings, check_address, create_app

    if not 1 <= workers <= 256:
        raise UserError(f"--workers must be from 1 to 256, not {workers}")
    settings = Settings(
        model=str(model.resolve()),
        runtime=runtime,
        max_upload_mb=max_upload_mb,
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        max_inflight=max_inflight,
        body_timeout_s=body_timeout,
        threads=max(1, (os.cpu_count() or 1) // workers) if threads is None else threads,
    ).checked()
    check_address(host, port)
    app = create_app(settings)  # a bad MODEL fails here, with one line, before serving
    print(
        f"cropdoc: serving {model} on http://{host}:{port}/ (API at /openapi.json)", file=sys.stderr
    )
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="warning")
        return
    # each worker process builds its own app from the settings in its environment
    os.environ["CROPDOC_SERVE_SETTINGS"] = settings.to_env()
    uvicorn.run(
        "cropdoc.serve.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's data and results.")] = Path(
        "demo"
    ),
    as_json: JsonOpt = False,
) -> None:
    """Run the whole pipeline on the embedded demo dataset."""
    from cropdoc.demo import run_demo

    result = run_demo(out)
    _emit(
        result,
        as_json,
        f"demo: error rate {result['error_rate']:.1%} on the demo's "
        f"validation split; outputs in {out} (model: {result['run']})",
    )


def main() -> None:
    """Entry point: run the app and turn user errors into one line on stderr. Progress and
    plain lines go to stderr, unless ``--json`` asks for nothing but the JSON document."""
    from cropdoc.progress import show_output

    show_output("--json" not in sys.argv[1:])
    try:
        app()
    except UserError as exc:
        print(f"cropdoc: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
