"""The commands that use a model: explain, predict, export."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from cropdoc.cli.options import (
    BsOpt,
    DeviceOpt,
    JsonOpt,
    at_least_one,
    emit,
)
from cropdoc.core.errors import UserError


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
    from cropdoc.inference import figures, localisation

    if score is not None:
        result = localisation.score(model, score, images or None, method, dilate, device)
        lines = [f"{'class':<28} {'images':>6} {'pointing':>8} {'energy':>7} {'chance':>7}"]
        rows = [*result["per_class"].items(), ("all", result)]
        lines += [
            f"{name:<28} {r['images']:>6} {r['pointing_game']:>8.3f} "
            f"{r['energy_inside']:>7.3f} {r['chance']:>7.3f}"
            for name, r in rows
        ]
        emit(result, as_json, "\n".join(lines))
        return
    if not images:
        raise UserError("give images or folders to explain (or --score MASK_DIR)")
    items = explaining.explain(model, images, method, class_name, device, target)
    if not items:
        raise UserError("no images found in the paths given")
    folder = out or (model / "explain" if model.is_dir() else Path("explain"))
    result = {"method": method, "images": [], "index": None}
    for n, item in enumerate(items):
        figure = figures.save_figure(item, folder / f"{n:04d}-{Path(item.path).stem}.png")
        result["images"].append(
            {"path": item.path, "target": item.target, "top": item.top, "figure": str(figure)}
        )
    result["index"] = str(figures.save_index(items, folder / "index.png"))
    lines = [
        f"{r['path']}: {r['top'][0][0]} {r['top'][0][1]:.2f} -> {r['figure']}"
        for r in result["images"]
    ]
    emit(result, as_json, "\n".join([*lines, f"index: {result['index']}"]))


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
        str, typer.Option(help="torch, onnx, openvino or tflite (an exported model; no torch).")
    ] = "torch",
    quality_check: Annotated[
        bool,
        typer.Option(help="Send back small, blurred, dark, overexposed or non-leaf photos."),
    ] = True,
    group_by: Annotated[
        str | None,
        typer.Option(help="One answer per plant: a CSV column naming it, or folder."),
    ] = None,
    fuse: Annotated[
        str, typer.Option(help="How --group-by fuses: mean, or logmean (of log-probabilities).")
    ] = "mean",
    as_json: JsonOpt = False,
) -> None:
    """Diagnose photos with one model or an ensemble; or write a Kaggle submission."""
    at_least_one(bs=bs, top_k=top_k)
    models, inputs = _models_then_inputs(paths)
    if submission is not None and (images is None or inputs):
        raise UserError("--submission needs --images FOLDER and no other inputs")
    from cropdoc.inference.scorers import load_scorer

    scorer = load_scorer(models, runtime, ensemble_weights, device, tta)
    from cropdoc.inference import predictions as run

    if submission is not None:
        # a submission answers every photo: its labels never depend on the quality checks
        predict_images = functools.partial(run.predict_paths, scorer=scorer, bs=bs, quality=False)
        written = run.write_submission(
            predict_images, submission, images, out or Path("submission.csv"), submit_target
        )
        emit({"submission": str(written)}, as_json, f"wrote {written}")
        return
    if group_by:
        from cropdoc.inference import fusion

        groups = fusion.read_groups(inputs, group_by)  # checked before any photo is scored
        predictions = run.predict_paths(inputs, scorer, bs, quality_check)
        _show_groups(fusion.fuse_predictions(predictions, groups, fuse, top_k), predictions, out,
                     as_json)  # fmt: skip
        return
    predictions = run.predict_paths(inputs, scorer, bs, quality_check)
    _show_predictions(predictions, top_k, out, as_json, run.write_predictions)


def _models_then_inputs(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """The leading model folders (holding model.json) or .onnx / .xml / .tflite files, and
    the rest."""
    models = []
    for path in paths:
        if not ((path / "model.json").is_file() or path.suffix in (".onnx", ".xml", ".tflite")):
            break
        models.append(path)
    if not models:
        raise UserError(
            "start with at least one model (a folder holding model.json, or "
            "a .onnx, OpenVINO .xml or .tflite file), then the images"
        )
    return models, paths[len(models) :]


def _verdict_text(row: dict) -> str:
    if row["verdict"] == "retake":
        return f"retake: {row['advice']}"
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
    emit(result, as_json, "\n".join(lines))


def _show_groups(rows: list[dict], predictions, out, as_json: bool) -> None:
    """One line (and row of ``--out``) per group of photos."""
    from cropdoc.inference.fusion import write_groups

    result = {
        "groups": rows,
        "errors": [{"path": p, "reason": r} for p, r in predictions.errors],
    }
    if out is not None:
        write_groups(result, out)
    text = []
    for row in rows:
        said = (
            f"{row['top'][0]['label']} ({row['confidence']:.2f})"
            if row["verdict"] == "diagnosis"
            else f"{row['verdict']}: {row['advice']}"
        )
        left = f", {len(row['left_out'])} left out" if row["left_out"] else ""
        text.append(f"{row['group']}: {said} (from {len(row['used'])} photos{left})")
    text += [f"unreadable {e['path']}: {e['reason']}" for e in result["errors"]]
    emit(result, as_json, "\n".join(text))


def export(
    model: Annotated[Path, typer.Argument(help="Run folder or bundle.")],
    format: Annotated[
        str,
        typer.Option("--format", help="onnx, openvino, tflite, or web (an offline web app)."),
    ] = "onnx",
    int8: Annotated[bool, typer.Option(help="Quantise to int8 (static, calibrated).")] = False,
    calibrate: Annotated[
        list[Path] | None,
        typer.Option(help="Images or folders to calibrate int8 on (e.g. the training images)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="The file to write (web: the folder, default RUN/app).")
    ] = None,
    ort_web: Annotated[
        Path | None,
        typer.Option(help="web: a folder of onnxruntime-web's dist files (default: from npm)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a model to ONNX (dynamic batch; dynamic size for CNNs) and check parity; or
    build an offline web app around it."""
    if format not in ("onnx", "openvino", "tflite", "web"):
        raise UserError(f"--format {format} is not supported: use onnx, openvino, tflite or web")
    if format in ("openvino", "tflite"):
        from cropdoc.inference import mobile

        result = (mobile.export_openvino if format == "openvino" else mobile.export_tflite)(
            model, out
        )
        emit(result, as_json, f"wrote {result[format]}\n{_photo_parity(result['parity'])}")
        return
    if format == "web":
        from cropdoc.inference.webapp import export_web

        result = export_web(model, out, int8=int8, calibrate=calibrate, ort_web=ort_web)
        lines = [f"wrote the web app {result['app']} ({result['bytes'] / 2**20:.1f} MB)"]
    else:
        from cropdoc.inference.export import export_onnx

        result = export_onnx(model, out, int8=int8, calibrate=calibrate)
        lines = [f"wrote {result['onnx']}"]
    lines += [
        f"parity at {p['size'][0]}x{p['size'][1]}: max |logit diff| "
        f"{p['max_abs_diff']:.2e}, top-1 agreement {p['top1_agreement']:.0%}"
        + "".join(f"; {name} max |diff| {d:.2e}" for name, d in p.get("targets", {}).items())
        for p in result["parity"]
    ]
    lines.append(_photo_parity(result["photo_parity"]))
    emit(result, as_json, "\n".join(lines))


def _photo_parity(p: dict) -> str:
    """An export's parity on held-out photos, in a line."""
    if not p["photos"]:
        return "no held-out photos here (the run's data is elsewhere): photo parity not checked"
    return (
        f"parity on {p['photos']} held-out photos through its own preprocessing: top-1 "
        f"agreement {p['top1_agreement']:.0%}, max |probability diff| {p['max_prob_diff']:.2e}"
    )


COMMANDS = {"explain": explain, "predict": predict, "export": export}
