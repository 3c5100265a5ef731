"""``recipe``: a documented winning recipe as one resumable job.

``paddy-gold`` is the best documented Paddy Doctor solution (Jeremy Howard's "Road to the
Top" notebooks, private accuracy 0.98732, the gold line): four large pretrained models on
photos resized to 640x480 (or squished to 480x480), trained at 192-320 px with fastai's
``fine_tune`` (one frozen epoch, then 12 at lr 0.01), ``aug_transforms(min_scale=0.75)``,
mixed precision and gradient accumulation (batches of 32, two to a step), each run on a
random validation split of its own; then test-time augmentation and the mean of the runs'
probabilities with the ViT runs counted twice, written as a Kaggle submission.

The runs train as ``compare``'s do (a process each, resumable: a rerun skips finished runs
and continues an interrupted one). Before training the job prints its plan and a time
estimate from a few measured training steps of each model on this machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from cropdoc.config import TrainConfig
from cropdoc.core.errors import UserError
from cropdoc.core.files import atomic_write_json, atomic_write_text
from cropdoc.core.progress import say
from cropdoc.engine.report import markdown_table
from cropdoc.evaluation.compare import run_name, train_runs, write_leaderboard

RECIPES = ("paddy-gold",)
# (architecture, item size, resize, training size, ensemble weight)
PADDY_GOLD = (
    ("convnext_large.fb_in22k", "640x480", "crop", "320x224", 1),
    ("vit_large_patch16_224.augreg_in21k_ft_in1k", "480", "squish", "224", 2),
    ("vit_large_patch16_224.augreg_in21k_ft_in1k", "640x480", "crop", "224", 2),
    ("swinv2_large_window12_192.ms_in22k", "480", "squish", "192", 1),
    ("swinv2_large_window12_192.ms_in22k", "640x480", "crop", "192", 1),
    ("swin_large_patch4_window7_224.ms_in22k_ft_in1k", "640x480", "crop", "224", 1),
)
# the settings of every run (fastai's fine_tune, lr 0.01, bs 64 as 2 x 32)
PADDY_SETTINGS = dict(
    epochs=12,
    freeze_epochs=1,
    lr=0.01,
    min_scale=0.75,
    bs=32,
    accum=2,
    cache_size=640,
    precision="auto",
)
ITEMS = (("480", "squish"), ("640x480", "crop"))  # each --archs model gets both

COLUMNS = [
    ("name", "run"),
    ("error_rate", "error rate"),
    ("error_rate_tta", "error rate, TTA"),
    ("weight", "ensemble weight"),
    ("seed", "split seed"),
    ("train_seconds", "training s"),
    ("source", "weights"),
]


def recipe_plan(
    name: str,
    data: str | os.PathLike,
    archs: list[str] | None = None,
    settings: dict | None = None,
) -> tuple[dict[str, dict], dict[str, float], dict[str, str]]:
    """The runs of recipe ``name`` on ``data``: their settings by run name (the recipe's,
    then ``settings``, each run with its own split seed), their ensemble weights and where
    each one's starting weights come from. ``archs`` replaces the recipe's models: each
    trains on both item resizes (squish 480, crop 640x480) at ``settings["size"]`` or its
    default input size, a ViT counted twice. Models without weights here are left out."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    settings = dict(settings or {})
    pretrained = settings.get("pretrained", True) and not settings.get("weights")
    base_seed = int(settings.pop("seed", TrainConfig().seed))
    chosen = PADDY_GOLD if not archs else [line for a in archs for line in _own(a, settings)]
    runs, weights, sources, missing = {}, {}, {}, []
    for n, (arch, item, resize, size, weight) in enumerate(chosen):
        source = weights_source(arch) if pretrained else "as given (no hub weights needed)"
        if source is None:
            missing.append(arch)
            continue
        run = f"{arch}-{resize}{item}-{size}"
        values = {
            **PADDY_SETTINGS,
            "item_size": item,
            "resize": resize,
            "size": size,
            **settings,
            "arch": arch,
            "seed": base_seed + n,  # a validation split of its own
            "data": str(Path(data).resolve()),
            "out": "",
        }
        runs[run] = dataclasses.asdict(TrainConfig.from_dict(values))
        weights[run], sources[run] = float(weight), source
    for arch in dict.fromkeys(missing):
        say(f"{arch}: no pretrained weights here (offline, none in the hub cache): left out")
    if not runs:
        raise UserError(
            "none of the recipe's models has pretrained weights on this machine (offline, "
            "nothing in the hub cache): run it where the hub is reachable, or give --archs "
            "with --weights FILE or --no-pretrained"
        )
    return runs, weights, sources


def _own(arch: str, settings: dict) -> list[tuple]:
    """A ``--archs`` model's recipe lines: its arch, item, resize, size and weight."""
    from cropdoc.model.archs import check_arch
    from cropdoc.model.timm_import import timm

    check_arch(arch)
    size = settings.get("size") or _default_size(arch)
    vit = arch.split(".")[0] in timm.list_models(module="vision_transformer")
    return [(arch, item, resize, size, 2 if vit else 1) for item, resize in ITEMS]


def _default_size(arch: str) -> str:
    from cropdoc.model.timm_import import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    return "x".join(map(str, cfg.input_size[1:])) if cfg else "224"


def weights_source(arch: str) -> str | None:
    """Where ``arch``'s pretrained weights come from: the hub cache, a download when its run
    starts, or None when neither can work (offline, nothing cached)."""
    from huggingface_hub import constants, try_to_load_from_cache

    from cropdoc.model.timm_import import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or not cfg.hf_hub_id:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(cfg.hf_hub_id, filename), str):
            return f"hub cache ({cfg.hf_hub_id})"
    if constants.HF_HUB_OFFLINE:
        return None
    return f"downloaded from the hub ({cfg.hf_hub_id})"


def estimate_seconds(runs: dict[str, dict], images: dict[str, int]) -> dict[str, float]:
    """Seconds each run's steps should take on this machine: its model's measured training
    step (random weights, a small batch, the median of three after two warm-up steps) times
    its training photos and epochs, plus a third of that per photo for validation every
    epoch and the TTA views. Starting, loading and calibrating a run come on top."""
    import torch

    from cropdoc.contract.views import tta_views
    from cropdoc.model.archs import create_model
    from cropdoc.model.device import pick_device

    found = {}
    for name, settings in runs.items():
        config = TrainConfig.from_dict(settings)
        device = pick_device(config.device)
        size = config.parsed.size
        model = create_model(config.arch, images["classes"], False, img_size=size).to(device)
        batch = 2 if device.type == "cpu" else min(int(config.bs), 16)
        x = torch.randn(batch, 3, *size, device=device)
        y = torch.zeros(batch, dtype=torch.long, device=device)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        seconds = []
        for _ in range(5):
            start = time.perf_counter()
            with torch.autocast(device.type, dtype, enabled=device.type == "cuda"):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
        per_photo = sorted(seconds[2:])[1] / batch  # the median, after two warm-up steps
        epochs = config.epochs + config.freeze_epochs
        views = len(tta_views(True))
        scored = images["valid"] * epochs + (images["valid"] + images["test"]) * views
        found[name] = per_photo * (images["train"] * epochs + scored / 3)
        del model
    return found


def run_recipe(
    name: str,
    data: str | os.PathLike,
    out: str | os.PathLike | None = None,
    archs: list[str] | None = None,
    settings: dict | None = None,
    plan_only: bool = False,
) -> dict:
    """Run recipe ``name`` on ``data`` into ``out`` (default ``runs/NAME-DATA``): the plan
    and time estimate, every run (resumable), each run's error with TTA on its own split,
    the weighted TTA ensemble's submission when ``data`` has ``sample_submission.csv`` and
    ``test_images/``, the leaderboard (``report.md``) and ``recipe.md``. ``plan_only``:
    stop after the estimate."""
    from cropdoc.data.layouts import discover

    data = Path(data)
    folder = Path(out) if out else Path("runs") / f"{name}-{data.resolve().name}"
    runs, weights, sources = recipe_plan(name, data, archs, settings)
    dataset = discover(data)
    sample, test = data / "sample_submission.csv", data / "test_images"
    valid_pct = TrainConfig.from_dict(next(iter(runs.values()))).valid_pct
    images = {
        "classes": len(dataset.classes),
        "train": round(len(dataset.labelled) * (1 - valid_pct)),
        "valid": round(len(dataset.labelled) * valid_pct),
        "test": len(dataset.unlabelled),
    }
    say(f"recipe {name}: {len(runs)} runs on {len(dataset.labelled)} labelled photos ({data})")
    for run, settings_ in runs.items():
        say(f"  {run}: weight {weights[run]:g}, split seed {settings_['seed']}, {sources[run]}")
    estimate = estimate_seconds(runs, images)
    total = sum(estimate.values())
    say(f"estimate: about {_duration(total)} on this machine (measured steps of each model)")
    plan = {
        "recipe": name,
        "runs": list(runs),
        "weights": weights,
        "sources": sources,
        "estimate_seconds": {k: round(v, 1) for k, v in estimate.items()},
        "images": images,
    }
    if plan_only:
        return {**plan, "recipe_folder": str(folder)}
    folder.mkdir(parents=True, exist_ok=True)
    start = time.time()
    rows = train_runs(folder, runs, {"recipe": name})
    for row, run in zip(rows, runs, strict=True):
        row.update(weight=weights[run], seed=runs[run]["seed"], source=sources[run])
        row["error_rate_tta"] = _tta_error(folder / run_name(run))
    ranked = sorted(rows, key=lambda r: (r["error_rate"], r["valid_loss"]))
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank
    files = write_leaderboard(folder, ranked)
    models = [str(folder / run_name(run)) for run in runs]
    submission = None
    if sample.is_file() and test.is_dir():
        from cropdoc.inference.predict import submission as write

        path = write(models, sample, test, folder / "submission.csv", tta=True,
                     weights=[weights[r] for r in runs])  # fmt: skip
        submission = str(path)
        say(f"submission: {submission} (TTA, weighted mean of {len(models)} runs)")
    else:
        say(f"{data} has no sample_submission.csv and test_images/: no submission written")
    result = {
        **plan,
        "recipe_folder": str(folder),
        "leaderboard": ranked,
        "submission": submission,
        "seconds": round(time.time() - start, 1),
        "files": {**files, "recipe.md": str(folder / "recipe.md")},
    }
    atomic_write_json(folder / "recipe.json", {k: v for k, v in result.items() if k != "files"})
    _write_report(folder / "recipe.md", result)
    return result


def _tta_error(run: Path) -> float:
    """The run's error rate with TTA on its own validation split (kept once measured)."""
    from cropdoc.evaluation.evaluate import evaluate

    saved = run / "evaluation" / "evaluation.json"
    if saved.exists():
        kept = json.loads(saved.read_text(encoding="utf-8")).get("error_rate_tta")
        if kept is not None:
            return kept
    return evaluate(run, tta=True)["error_rate_tta"]


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _write_report(path: Path, result: dict) -> None:
    lines = [
        f"# Recipe {result['recipe']}",
        "",
        f"{len(result['runs'])} runs, each on its own validation split (so the runs' errors",
        "are not on the same photos and the ensemble has no common held-out error: the",
        "submission is its test).",
        "",
        *markdown_table(result["leaderboard"], COLUMNS),
        "",
        f"Estimated {_duration(sum(result['estimate_seconds'].values()))}; trained in "
        f"{_duration(result['seconds'])} (this invocation).",
        "",
        f"Submission: {result['submission'] or 'none (no sample_submission.csv)'}.",
        "",
        "The leaderboard with speed and size, and the learning curves: [report.md](report.md).",
        "",
    ]
    atomic_write_text(path, "\n".join(lines))
