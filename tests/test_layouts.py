"""Dataset discovery in every supported layout, and clear errors for unusable datasets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import save_rgb

from cropdoc.core.errors import UserError
from cropdoc.data.cache import prepare
from cropdoc.data.layouts import DatasetError, discover
from cropdoc.engine.trainer import train


def test_class_folders_nested_and_flat(tmp_path):
    save_rgb(tmp_path / "blast" / "a.jpg", (1, 2, 3))
    save_rgb(tmp_path / "blast" / "field2" / "day1" / "b.png", (1, 2, 3), fmt="PNG")
    save_rgb(tmp_path / "normal" / "c.jpeg", (1, 2, 3))
    save_rgb(tmp_path / "loose.jpg", (1, 2, 3))
    (tmp_path / "normal" / "readme.md").write_text("x")
    ds = discover(tmp_path)
    assert ds.layout == "folders"
    assert ds.counts() == {"blast": 2, "normal": 1}
    reasons = {p.name: r for p, r in ds.skipped}
    assert reasons["loose.jpg"] == "image outside any class folder"
    assert reasons["readme.md"].startswith("not an image file")


def test_split_layout_with_unlabelled_test(tmp_path):
    for split in ("train", "val"):
        for label in ("blast", "normal"):
            save_rgb(tmp_path / split / label / f"{split}.jpg", (1, 2, 3))
    save_rgb(tmp_path / "test" / "t1.jpg", (1, 2, 3))
    ds = discover(tmp_path)
    assert ds.layout == "split"
    assert sorted((i.split, i.label) for i in ds.labelled) == [
        ("train", "blast"),
        ("train", "normal"),
        ("valid", "blast"),
        ("valid", "normal"),
    ]
    assert [(i.path.name, i.split) for i in ds.unlabelled] == [("t1.jpg", "test")]


def test_a_train_folder_alone_is_a_split_without_validation(tmp_path):
    """``train/<class>/`` with no ``valid/`` (as rice-field comes): the classes are inside
    it, and training holds out its own validation photos."""
    from cropdoc.data.cache import Cache, prepare
    from cropdoc.data.loader import split_cache

    for label in ("blast", "blight", "tungro"):
        for i in range(5):
            save_rgb(tmp_path / "data" / "train" / label / f"{i}.jpg", (10 * i, 90, 40))
    ds = discover(tmp_path / "data")
    assert ds.layout == "split" and ds.classes == ["blast", "blight", "tungro"]
    assert {i.split for i in ds.labelled} == {"train"}
    split = split_cache(Cache(prepare(tmp_path / "data", cache=tmp_path / "cache", size=64).cache))
    assert len(split.valid) == 3 and len(split.train) == 12  # the seeded 20%
    # a class that happens to be named like a split beside others is still a class
    save_rgb(tmp_path / "other" / "train" / "a.jpg", (1, 2, 3))
    save_rgb(tmp_path / "other" / "healthy" / "b.jpg", (1, 2, 3))
    assert discover(tmp_path / "other").classes == ["healthy", "train"]


def test_kaggle_paddy_layout_keeps_metadata(tmp_path):
    save_rgb(tmp_path / "train_images" / "blast" / "100.jpg", (1, 2, 3))
    save_rgb(tmp_path / "train_images" / "normal" / "101.jpg", (1, 2, 3))
    save_rgb(tmp_path / "test_images" / "200.jpg", (1, 2, 3))
    (tmp_path / "train.csv").write_text(
        "image_id,label,variety,age\n100.jpg,blast,ADT45,45\n101.jpg,normal,Ponni,60\n"
        "102.jpg,normal,Ponni,61\n"
    )
    (tmp_path / "sample_submission.csv").write_text("image_id,label\n200.jpg,\n")
    ds = discover(tmp_path)
    assert ds.layout == "kaggle"
    first = next(i for i in ds.items if i.path.name == "100.jpg")
    assert first.label == "blast" and first.meta == {"variety": "ADT45", "age": "45"}
    assert len(ds.unlabelled) == 1
    assert any("102.jpg" in str(p) and "missing" in r for p, r in ds.skipped)
    assert ds.warnings == ["1 image(s) listed in train.csv are missing"]


def test_csv_manifest(tmp_path):
    save_rgb(tmp_path / "imgs" / "a.jpg", (1, 2, 3))
    save_rgb(tmp_path / "imgs" / "b.jpg", (1, 2, 3))
    save_rgb(tmp_path / "imgs" / "c.jpg", (1, 2, 3))
    manifest = tmp_path / "list.csv"
    manifest.write_text(
        "path,label,split\nimgs/a.jpg,blast,train\nimgs/b.jpg,normal,val\n"
        f"{tmp_path / 'imgs' / 'c.jpg'},normal,\nimgs/gone.jpg,blast,train\n"
    )
    ds = discover(manifest)
    assert ds.layout == "csv"
    assert [(i.path.name, i.label, i.split) for i in ds.items] == [
        ("a.jpg", "blast", "train"),
        ("b.jpg", "normal", "valid"),
        ("c.jpg", "normal", None),
    ]
    assert "gone.jpg" in str(ds.skipped[0][0]) and "missing" in ds.skipped[0][1]


def test_demo_data_is_found_as_kaggle_layout(demo_data):
    ds = discover(demo_data)
    assert ds.layout == "kaggle" and len(ds.classes) == 10
    assert set(ds.counts().values()) == {3} and len(ds.unlabelled) == 10
    assert not [p for p, _ in ds.skipped if "masks" in p.parts]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda root: (root / "empty").mkdir(parents=True), "no labelled images"),
        (lambda root: save_rgb(root / "blast" / "a.jpg", (1, 2, 3)), "only one class"),
        (lambda root: root.mkdir(), "no labelled images"),
    ],
)
def test_unusable_datasets_give_one_clear_error(tmp_path, build, message):
    root = tmp_path / "data"
    build(root)
    with pytest.raises(DatasetError, match=message):
        discover(root)


def test_missing_csv_columns(tmp_path):
    (tmp_path / "m.csv").write_text("file,class\na.jpg,x\n")
    with pytest.raises(DatasetError, match="lacks the column"):
        discover(tmp_path / "m.csv")


def test_cli_prints_one_line_not_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cropdoc", "scan", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def _two_classes(root: Path) -> Path:
    for label in ("blast", "normal"):
        for i in range(4):
            save_rgb(root / label / f"{label}{i}.jpg", (40 * i, 90, 30))
    return root


def test_links_broken_and_outside(tmp_path, tiny_config):
    root = _two_classes(tmp_path / "data")
    (root / "blast" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    outside = save_rgb(tmp_path / "elsewhere" / "far.jpg", (200, 30, 30))
    (root / "normal" / "far.jpg").symlink_to(outside)
    ds = discover(root)
    reasons = {p.name: r for p, r in ds.skipped}
    assert reasons["gone.jpg"].startswith("broken link (to ") and "missing" in reasons["gone.jpg"]
    assert ds.counts() == {"blast": 4, "normal": 5}  # the outside link is followed, and said
    assert any("links to files outside" in w and "far.jpg" in w for w in ds.warnings)
    # prepare and train take the dataset as it is: the broken link is a skipped file
    result = prepare(root, cache=tmp_path / "cache", workers=1)
    assert result.summary()["cached"] == 9
    train(tiny_config(data=str(root), bs=2, out=str(tmp_path / "run"), freeze_epochs=0))
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_manifest_repeats_conflicts_empty_paths_and_paths_outside(tmp_path):
    root = _two_classes(tmp_path / "data")
    save_rgb(tmp_path / "far.jpg", (1, 2, 3))
    rows = [
        "path,label",
        "blast/blast0.jpg,blast",
        "blast/blast1.jpg,blast",
        "blast/blast1.jpg,blast",  # repeated, same label: used once, reported
        ",normal",  # an empty path
        "normal/normal0.jpg,normal",
        "../far.jpg,normal",  # leaves the manifest's folder
        f"{tmp_path / 'far.jpg'},normal",  # absolute, the same file again
    ]
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    ds = discover(manifest)
    assert ds.counts() == {"blast": 2, "normal": 2}
    reasons = [r for _, r in ds.skipped]
    assert "row 5 has an empty path" in reasons
    assert sum(r.startswith("listed again in row") for r in reasons) == 2
    assert any("listed more than once" in w for w in ds.warnings)
    assert any("lead outside its folder" in w and "../far.jpg" in w for w in ds.warnings)
    manifest.write_text("path,label\nblast/blast0.jpg,blast\nblast/blast0.jpg,normal\n")
    with pytest.raises(DatasetError, match="lists blast/blast0.jpg twice, as 'blast' and 'normal'"):
        discover(manifest)


def test_a_class_with_no_readable_image_is_refused(tmp_path, tiny_config):
    root = _two_classes(tmp_path / "data")
    for i in range(3):
        (root / "rust" / f"bad{i}.jpg").parent.mkdir(exist_ok=True)
        (root / "rust" / f"bad{i}.jpg").write_bytes(b"\xff\xd8 not a picture")
    with pytest.raises(UserError, match="class rust has no readable image"):
        train(tiny_config(data=str(root), bs=2, out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()  # no half-made run is left
