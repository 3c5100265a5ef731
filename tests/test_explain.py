"""explain: heatmaps for every family at square and rectangular sizes, attention maps, the
localisation score, hooks released, the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cli_process
import numpy as np
import pytest
import torch
from PIL import Image

import cropdoc
from cropdoc.core.errors import UserError
from cropdoc.inference.explain import Explainer
from cropdoc.inference.localisation import localisation, score
from cropdoc.model.build import save_bundle

FAMILIES = [
    "test_resnet",
    "test_convnext",
    "test_efficientnet",
    "test_coatnet",
    "test_maxvit",
    "test_vit",
]


@pytest.fixture(scope="module")
def leaf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("leaf") / "leaf.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(path)
    return path


def _bundle(folder: Path, arch: str, size) -> Path:
    from cropdoc.model.archs import create_model

    torch.manual_seed(0)
    model = create_model(arch, 3, pretrained=False, img_size=size)
    meta = {"arch": arch, "classes": ["a", "b", "c"], "size": list(size)}
    return save_bundle(folder, model, {**meta, "mean": [0.5] * 3, "std": [0.25] * 3})


def _no_hooks(model: torch.nn.Module) -> bool:
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks) for m in model.modules()
    )


@pytest.mark.parametrize("size", [(64, 64), (96, 64)], ids=["square", "rectangular"])
@pytest.mark.parametrize("arch", FAMILIES)
def test_every_family_gives_a_heatmap_of_the_input_size(arch, size, leaf, tmp_path):
    explainer = Explainer(_bundle(tmp_path / arch, arch, size))
    fused = {n: m.fused_attn for n, m in explainer.net.named_modules() if hasattr(m, "fused_attn")}
    methods = ["gradcam", "attention"] if arch in ("test_vit", "test_coatnet") else ["gradcam"]
    for method in methods:
        item = explainer(leaf, method)
        assert item.heatmap.shape == size and item.image.shape == (*size, 3)
        assert item.heatmap.dtype == np.float32
        assert item.heatmap.min() >= 0 and item.heatmap.max() <= 1
        assert len(item.top) == 3 and item.target == item.top[0][0]
        assert _no_hooks(explainer.net)
    after = {n: m.fused_attn for n, m in explainer.net.named_modules() if hasattr(m, "fused_attn")}
    assert after == fused


def test_the_class_to_explain_and_other_methods(leaf, tmp_path):
    bundle = _bundle(tmp_path / "r", "test_convnext", (64, 96))
    items = cropdoc.explain(bundle, [leaf], method="gradcam++", target="c")
    assert items[0].target == "c" and items[0].heatmap.shape == (64, 96)
    for method in ("hirescam", "layercam", "eigencam", "scorecam"):
        heat = cropdoc.explain(bundle, [leaf], method=method)[0].heatmap
        assert heat.shape == (64, 96) and heat.min() >= 0 and heat.max() <= 1
    with pytest.raises(UserError, match="not one of the model's"):
        cropdoc.explain(bundle, [leaf], target="rust")
    with pytest.raises(UserError, match="has no self-attention"):
        cropdoc.explain(bundle, [leaf], method="attention")


def test_localisation_is_exact_on_hand_made_maps():
    mask = np.zeros((40, 50), bool)
    mask[10:20, 10:20] = True  # 100 pixels
    heat = np.zeros((40, 50), np.float32)
    heat[15, 15] = 1.0  # peak inside
    heat[30, 40] = 0.5  # a third of the heat outside
    result = localisation(heat, mask, dilate=2)
    assert result["hit"] is True
    assert result["energy"] == pytest.approx(1.0 / 1.5)
    assert result["chance"] == pytest.approx(14 * 14 / (40 * 50))  # the mask grown by 2
    near = np.zeros((40, 50), np.float32)
    near[21, 15] = 1.0  # two pixels below the mask: a hit with dilate 2, a miss with 1
    assert localisation(near, mask, dilate=2)["hit"] is True
    assert localisation(near, mask, dilate=1)["hit"] is False
    assert localisation(near, mask, dilate=1)["energy"] == 0.0


@pytest.mark.slow
def test_score_on_demo_masks(trained_run):
    result = score(trained_run, trained_run.parent / "data" / "masks")
    # the validation split's diseased images (healthy leaves have empty masks)
    assert 0 < result["images"] <= 24
    assert "normal" not in result["per_class"]
    assert sum(r["images"] for r in result["per_class"].values()) == result["images"]
    for r in [result, *result["per_class"].values()]:
        assert 0 <= r["pointing_game"] <= 1 and 0 <= r["energy_inside"] <= 1
        assert 0 < r["chance"] < 1


def _explain(*args) -> subprocess.CompletedProcess:
    return cli_process.run("explain", *args)


@pytest.mark.slow
def test_cli_explain_and_score(trained_run, tmp_path):
    images = sorted((trained_run.parent / "data" / "train_images" / "blast").glob("*.jpg"))[:2]
    done = _explain(trained_run, *images, "--out", tmp_path / "explain", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert len(result["images"]) == 2 and Path(result["index"]).stat().st_size > 0
    for item in result["images"]:
        figure = Image.open(item["figure"])
        assert figure.width > 2.5 * figure.height  # input, heatmap and overlay side by side
    done = _explain(trained_run, "--score", trained_run.parent / "data" / "masks")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("all ")
    bad = _explain(trained_run, "--method", "magic", images[0])
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--method" in bad.stderr
