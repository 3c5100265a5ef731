"""The dataset doctor: copies (exact and near) and leaks on real demo photos, label flips
found by K-fold training and cleanlab, --apply's manifest trained on, resume after a kill,
and the review page in a headless browser over real HTTP."""

from __future__ import annotations

import csv
import dataclasses
import http.client
import io
import json
import os
import re
import shutil
import time
from pathlib import Path

import cli_process
import numpy as np
import pytest
from conftest import COLOURS, digest, kill_after_epoch, save_rgb
from PIL import Image, ImageEnhance

from cropdoc.audit.doctor import doctor
from cropdoc.audit.findings import Finding, Findings
from cropdoc.core.errors import UserError
from cropdoc.data.decisions import apply_decisions
from cropdoc.data.layouts import discover
from cropdoc.testing import TINY_TRAINING, free_port

CLASSES = ["blast", "brown_spot", "normal"]
TINY = {  # the shared tiny settings, smaller and from scratch
    **TINY_TRAINING,
    **dict(from_scratch=True, epochs=4, size="32", item_size="32", cache_size=64, workers=2),
}


TINY_ARGS = [
    "--arch", "test_resnet", "--no-pretrained", "--from-scratch", "--bs", "8", "--size", "32",
    "--item-size", "32", "--cache-size", "64", "--lr", "0.01", "--workers", "2",
]  # fmt: skip


def _with_comment(jpeg: bytes) -> bytes:
    """The same JPEG with a comment segment after its start marker: other bytes, the same
    pixels once decoded (as a re-save by a tool that keeps the JPEG data does)."""
    text = b"saved again"
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


@pytest.fixture(scope="module")
def leaves(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A manifest of 24 demo photos (train, one in valid, one unlabelled test) and five
    copies of five of them: byte-different but pixel-identical, re-encoded at quality 50,
    halved in size, cropped by 5%, brightened by 30%. Returns the manifest and each
    copy's original."""
    from cropdoc.data.demo import make_demo_data

    root = tmp_path_factory.mktemp("leaves")
    make_demo_data(root / "demo", per_class=8, classes=CLASSES, workers=2)
    photos = sorted((root / "demo" / "train_images").rglob("*.jpg"))
    rows = [(f"demo/{p.relative_to(root / 'demo')}", p.parent.name, "train") for p in photos]
    rows[3] = (rows[3][0], rows[3][1], "valid")
    rows[20] = (rows[20][0], "", "test")
    copies = root / "copies"
    copies.mkdir()
    made = {}

    def copy(n: int, name: str, label: str, split: str, save) -> None:
        source = photos[n]
        save(source, copies / name)
        rows.append((f"copies/{name}", label, split))
        made[name] = source.name

    copy(
        0,
        "exact.jpg",
        photos[0].parent.name,
        "train",
        lambda s, d: d.write_bytes(_with_comment(s.read_bytes())),
    )
    copy(
        5,
        "jpeg50.jpg",
        photos[5].parent.name,
        "train",
        lambda s, d: Image.open(s).save(d, quality=50),
    )
    copy(
        9,
        "half.png",
        photos[9].parent.name,
        "train",
        lambda s, d: (im := Image.open(s)).resize((im.width // 2, im.height // 2)).save(d),
    )

    def cropped(s: Path, d: Path) -> None:
        im = Image.open(s)
        im.crop((im.width // 20, im.height // 20, im.width, im.height)).save(d, quality=90)

    copy(13, "cropped.jpg", "blast", "valid", cropped)  # photo 13 is brown_spot: a conflict
    copy(
        17,
        "bright.jpg",
        "",
        "test",
        lambda s, d: ImageEnhance.Brightness(Image.open(s)).enhance(1.3).save(d, quality=90),
    )
    (copies / "broken.jpg").write_bytes(photos[1].read_bytes()[:300])  # truncated
    rows += [("copies/broken.jpg", "blast", "train"), ("copies/gone.jpg", "blast", "train")]
    manifest = root / "data.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    return manifest, made


def test_copies_and_leaks_are_found_and_others_are_not(leaves, tmp_path):
    manifest, made = leaves
    before = digest(manifest.parent)
    result = doctor(manifest, tmp_path / "doc", folds=0, settings={"cache": str(tmp_path / "c")})
    copies = [f for f in result.findings if f.kind in ("duplicate", "leak")]
    pairs = {frozenset(Path(p).name for p in f.images) for f in copies}
    assert pairs == {frozenset(pair) for pair in made.items()}  # nothing else is a copy
    by_copy = {next(Path(p).name for p in f.images if Path(p).name in made): f for f in copies}
    assert by_copy["exact.jpg"].score == 1.0 and "exact copies" in by_copy["exact.jpg"].note
    assert all("near copies" in by_copy[n].note for n in made if n != "exact.jpg")
    assert all(by_copy[n].score >= 0.8 for n in made)
    # the cropped copy is in valid under another label: a leak with a conflict, listed first
    first = result.findings[0]
    assert first is by_copy["cropped.jpg"] and first.kind == "leak"
    assert first.note.startswith("labels differ") and sorted(first.splits) == ["train", "valid"]
    assert by_copy["bright.jpg"].kind == "leak" and "test" in by_copy["bright.jpg"].splits
    assert {by_copy[n].kind for n in ("exact.jpg", "jpeg50.jpg", "half.png")} == {"duplicate"}
    assert result.summary["conflicts"] == 1
    unreadable = {Path(f.images[0]).name: f.note for f in result.of_kind("unreadable")}
    assert set(unreadable) == {"broken.jpg", "gone.jpg"} and "missing" in unreadable["gone.jpg"]
    assert [f.kind for f in result.findings[-2:]] == ["unreadable", "unreadable"]
    # the files: issues.csv one row per finding, the report, a grid per kind, no change to data
    with open(tmp_path / "doc" / "issues.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["kind"] for r in rows] == [f.kind for f in result.findings]
    assert rows[0]["given_labels"] == ";".join(label or "" for label in first.labels)
    report = (tmp_path / "doc" / "report.md").read_text()
    assert "| leak | 2 |" in report and "| duplicate | 3 |" in report
    grid = Image.open(tmp_path / "doc" / "grid-leak.png")
    assert grid.height > 2 * 160 and np.asarray(grid).std() > 10
    assert Findings.read(tmp_path / "doc").findings[0].images == first.images
    assert digest(manifest.parent) == before


def test_a_lower_similarity_finds_more_and_a_strict_one_fewer(leaves, tmp_path):
    manifest, made = leaves
    settings = {"cache": str(tmp_path / "c")}
    strict = doctor(manifest, tmp_path / "a", folds=0, settings=settings, similarity=0.9999)
    found = {Path(p).name for f in strict.findings for p in f.images}
    assert "exact.jpg" in found and "cropped.jpg" not in found


def _colours(root: Path, per_class: int = 12) -> tuple[Path, dict[str, str]]:
    """Solid-colour photos of three classes, the first of each class given the next class's
    label: a manifest, and each flipped photo's true label."""
    labels = list(COLOURS)
    rows, flips = [("path", "label")], {}
    for n, (label, colour) in enumerate(COLOURS.items()):
        for i in range(per_class):
            photo = save_rgb(root / "photos" / f"{label}_{i}.jpg", colour)
            given = labels[(n + 1) % 3] if i == 0 else label
            if given != label:
                flips[str(photo)] = label
            rows.append((f"photos/{photo.name}", given))
    with open(root / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root / "data.csv", flips


@pytest.mark.slow
def test_label_flips_are_flagged_and_apply_writes_a_manifest_train_reads(tmp_path):
    manifest, flips = _colours(tmp_path / "data")
    settings = {**TINY, "cache": str(tmp_path / "cache")}
    result = doctor(manifest, tmp_path / "doc", folds=3, settings=settings)
    labels = {f.images[0]: f for f in result.of_kind("label")}
    assert len(set(labels) & set(flips)) >= 2  # most flips are flagged ...
    assert len(labels) <= len(flips) + 2  # ... and little else
    assert all(labels[p].suggested == flips[p] for p in set(labels) & set(flips))
    assert result.summary["out_of_fold_error"] < 0.3
    for k in (1, 2, 3):  # one ordinary run folder per fold, with its out-of-fold scores
        fold = tmp_path / "doc" / "folds" / f"fold-{k}-of-3"
        assert (fold / "model.safetensors").exists() and (fold / "oof.json").exists()
    # decisions: the flagged photos relabelled as suggested, one photo dropped
    dropped = str(tmp_path / "data" / "photos" / "rust_5.jpg")
    decisions = tmp_path / "decisions.csv"
    with open(decisions, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "decision", "label"])
        writer.writerows([p, "relabel", f.suggested] for p, f in labels.items())
        writer.writerow([dropped, "drop", ""])
    clean_csv = tmp_path / "out" / "clean.csv"
    out = cli_process.run(
        "doctor", manifest, "--apply", decisions, "--manifest", clean_csv, "--json", check=True
    )
    summary = json.loads(out.stdout)
    assert summary["dropped"] == 1 and summary["relabelled"] == len(labels)
    clean = discover(tmp_path / "out" / "clean.csv")
    assert len(clean.items) == 35 and dropped not in {str(i.path) for i in clean.items}
    relabelled = {str(i.path): i.label for i in clean.items if str(i.path) in labels}
    assert relabelled == {p: f.suggested for p, f in labels.items()}
    run = cli_process.run(
        "train", clean_csv, *TINY_ARGS, "--epochs", 1, "--cache", tmp_path / "cache2",
        "--out", tmp_path / "run", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["best"]["valid_images"] == 7  # 20% of the 35 photos


@pytest.mark.slow
def test_doctor_folds_as_ray_tasks_find_what_the_sequential_doctor_finds(tmp_path):
    """doctor --engine ray on a real local Ray cluster (2 CPUs): the two folds trained as
    Ray tasks at once (one thread each) give the sequential doctor's findings and scores on
    the same seeds and threads, and a rerun reuses both folds."""
    manifest, _ = _colours(tmp_path / "data")
    args = ["doctor", manifest, "--folds", 2, *TINY_ARGS, "--cache", tmp_path / "cache", "--json"]
    runs, threads = {}, {**os.environ, "OMP_NUM_THREADS": "1"}
    for engine in ("local", "ray"):
        done = cli_process.run(*args, "--engine", engine, "--out", tmp_path / engine, env=threads)
        assert done.returncode == 0, done.stderr
        runs[engine] = json.loads(done.stdout)

    def findings(result: dict) -> list:
        return [(f["kind"], f["images"], f["suggested"]) for f in result["findings"]]

    assert findings(runs["ray"]) == findings(runs["local"]) and findings(runs["local"])
    assert runs["ray"]["summary"]["counts"] == runs["local"]["summary"]["counts"]
    for k in (1, 2):
        folds = [tmp_path / e / "folds" / f"fold-{k}-of-2" / "oof.json" for e in runs]
        scores = [json.loads(p.read_text()) for p in folds]
        assert scores[0]["indices"] == scores[1]["indices"]
        assert np.abs(np.array(scores[0]["probs"]) - np.array(scores[1]["probs"])).max() < 1e-6
    again = cli_process.run(*args, "--engine", "ray", "--out", tmp_path / "ray")
    assert again.returncode == 0 and findings(json.loads(again.stdout)) == findings(runs["ray"])


@pytest.mark.slow
def test_a_killed_doctor_resumes_its_folds(tmp_path):
    manifest, _ = _colours(tmp_path / "data")
    out = tmp_path / "doc"
    args = ["doctor", manifest, "--folds", "2", *TINY_ARGS, "--epochs", "6", "--cache",
            tmp_path / "cache"]  # fmt: skip
    second = out / "folds" / "fold-2-of-2"
    done = kill_after_epoch(args, out, epoch=1, state=second / "checkpoint" / "state.json")
    assert 1 <= done < 6 and not (second / "oof.json").exists()
    first_scores = (out / "folds" / "fold-1-of-2" / "oof.json").read_bytes()
    finished = cli_process.run(*args, "--out", out)
    assert finished.returncode == 0, finished.stderr
    assert "fold 1 of 2: scored before, reused" in finished.stderr
    assert f"resuming after epoch {done}" in finished.stderr
    assert (out / "folds" / "fold-1-of-2" / "oof.json").read_bytes() == first_scores
    assert (second / "oof.json").exists() and (out / "findings.json").exists()
    other = cli_process.run(*args, "--out", out, "--epochs", 5)
    assert other.returncode == 2 and other.stderr.count("\n") == 1
    assert "other settings" in other.stderr


def test_fold_split_deals_every_class_across_the_folds(tmp_path):
    from cropdoc.data.cache import open_cache
    from cropdoc.data.loader import split_cache

    manifest, _ = _colours(tmp_path / "data", per_class=10)
    cache = open_cache(manifest, tmp_path / "cache", 64, workers=1)
    valids = [split_cache(cache, fold=(k, 5)).valid for k in range(1, 6)]
    assert sorted(np.concatenate(valids).tolist()) == list(range(30))  # a partition
    for k, valid in enumerate(valids, start=1):
        split = split_cache(cache, fold=(k, 5))
        assert not set(split.train) & set(valid) and len(split.train) + len(valid) == 30
        assert np.bincount(split.targets[valid], minlength=3).tolist() == [2, 2, 2]


def test_bad_decisions_and_manifests_are_one_line(leaves, tmp_path):
    manifest, _ = leaves
    photo = str(discover(manifest).items[0].path)
    cases = {
        "path,decision,label\n" + photo + ",burn,\n": "is not one of keep, drop, relabel",
        "path,decision,label\n" + photo + ",relabel,\n": "relabel needs the new label",
        "path,decision,label\n/elsewhere/x.jpg,drop,\n": "not in",
        "path,label\nx,y\n": "lacks the column(s) decision",
        "path,decision,label\n" + photo + ",relabel,rose\n": "not one of the dataset's classes",
    }
    for text, says in cases.items():
        decisions = tmp_path / "d.csv"
        decisions.write_text(text)
        with pytest.raises(UserError, match=re.escape(says)):
            apply_decisions(manifest, decisions, tmp_path / "clean.csv")
    decisions.write_text(f"path,decision,label\n{photo},keep,\n")
    with pytest.raises(UserError, match="inside the dataset folder"):
        apply_decisions(manifest, decisions, manifest.parent / "clean.csv")
    with pytest.raises(UserError, match="inside the dataset folder"):
        apply_decisions(manifest, decisions, manifest)  # never over the user's own manifest
    assert not (tmp_path / "clean.csv").exists()
    with pytest.raises(UserError, match="inside the dataset folder"):
        doctor(manifest, manifest.parent / "doc", folds=0, settings={"cache": str(tmp_path / "c")})
    assert not (manifest.parent / "doc").exists()


def _request(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _start_review(manifest: Path, out: Path, port: int, tmp_path: Path) -> cli_process.Command:
    """``cropdoc doctor MANIFEST --folds 0 --review`` on ``port``, once it answers."""
    options = ("--review", "--out", out, "--port", port, "--cache", tmp_path / "c")
    server = cli_process.start(
        "doctor", manifest, "--folds", 0, *options, out=tmp_path / "review.log"
    )
    deadline = time.time() + 120
    while True:
        assert server.poll() is None, (tmp_path / "review.log").read_text()
        try:
            if _request(port, "GET", "/health")[0] == 200:
                return server
        except OSError:
            assert time.time() < deadline, "the review page did not start"
            time.sleep(0.2)


def _token(port: int) -> str:
    """The per-run token the review page carries."""
    page = _request(port, "GET", "/")[1].decode()
    return page.split('name="cropdoc-token" content="')[1].split('"')[0]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium: install Debian's chromium package (apt-get install chromium) "
    "to run the browser test; .ci/run does this",
)
def test_review_page_round_trip_in_a_headless_browser(leaves, tmp_path):
    from playwright.sync_api import sync_playwright

    manifest, _ = leaves
    out, port = tmp_path / "doc", free_port()
    server = _start_review(manifest, out, port, tmp_path)
    try:
        findings = json.loads(_request(port, "GET", "/findings")[1])
        conflict = findings["findings"][0]
        keep_n, fix_n = conflict["photos"][0]["n"], conflict["photos"][1]["n"]
        drop_n = findings["findings"][1]["photos"][1]["n"]
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector(".finding")
            assert len(page.query_selector_all(".finding")) == 7
            page.wait_for_function(
                "[...document.images].every(i => i.complete && i.naturalWidth > 0)"
            )
            card = f'.photo[data-photo="{fix_n}"]'
            page.select_option(f"{card} select", "brown_spot")
            page.click(f'{card} button[data-decision="relabel"]')
            page.click(f'.photo[data-photo="{keep_n}"] button[data-decision="keep"]')
            page.click(f'.photo[data-photo="{drop_n}"] button[data-decision="drop"]')
            page.wait_for_function(
                "document.getElementById('status').textContent.startsWith('3 decision')"
            )
            page.close()
            # a new tab (the old one closed) shows the decisions saved so far
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector(".finding")
            chosen = page.eval_on_selector_all(
                "button.chosen",
                "bs => bs.map(b => b.closest('.photo').dataset.photo + ':' + b.dataset.decision)",
            )
            assert sorted(chosen) == sorted(
                [f"{fix_n}:relabel", f"{keep_n}:keep", f"{drop_n}:drop"]
            )
            assert (
                page.inner_text(f'.photo[data-photo="{fix_n}"] .state') == "relabel as brown_spot"
            )
            browser.close()
        with open(out / "decisions.csv") as f:
            saved = {row["path"]: (row["decision"], row["label"]) for row in csv.DictReader(f)}
        photos = {p["n"]: p for f in findings["findings"] for p in f["photos"]}
        assert len(saved) == 3
        applied = apply_decisions(manifest, out / "decisions.csv", tmp_path / "clean.csv")
        assert applied["dropped"] == 1 and applied["relabelled"] == 1
        assert photos[drop_n]["name"] not in (tmp_path / "clean.csv").read_text()
        # hardening, as serve: strict JSON, photos by number only, small bodies, no docs
        bad = [
            b"not json",
            b"[1]",
            b'{"photo": 999, "decision": "drop"}',
            b'{"photo": true, "decision": "drop"}',
            b'{"photo": 0, "decision": "burn"}',
            b'{"photo": 0, "decision": "relabel", "label": "rose"}',
        ]
        json_headers = {"Content-Type": "application/json", "X-Cropdoc-Token": _token(port)}
        for body in bad:
            assert _request(port, "POST", "/decision", body, json_headers)[0] == 400
        assert _request(port, "POST", "/decision", b"x" * 40_000, json_headers)[0] == 413
        assert _request(port, "GET", "/photo/999")[0] == 404
        assert _request(port, "GET", "/photo/..%2f..%2fetc%2fpasswd")[0] in (404, 422)
        assert _request(port, "GET", "/docs")[0] == 404
        status, jpeg = _request(port, "GET", f"/photo/{keep_n}")
        assert status == 200 and max(Image.open(io.BytesIO(jpeg)).size) <= 480
    finally:
        server.terminate()
        server.wait(timeout=30)


def _confused_scores(classes: int = 4, per_class: int = 40, flips: int = 3):
    """Out-of-fold scores of ``classes`` classes where the models are sure of every class
    but the last two, which they tell apart only 60% of the time, and ``flips`` photos of
    class 0 labelled as class 1 (the models are sure they are class 0)."""
    from cropdoc.audit.labels import OutOfFold

    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(classes), per_class)
    probs = np.full((len(targets), classes), 0.02)
    pair = (classes - 2, classes - 1)
    for i, t in enumerate(targets):
        if t in pair:
            other = sum(pair) - t
            own = 0.6 if rng.random() < 0.6 else 0.35
            probs[i, t], probs[i, other] = own, 0.95 - own
        else:
            probs[i, t] = 0.95
    flipped = np.arange(flips)  # photos of class 0 ...
    targets[flipped] = 1  # ... labelled class 1
    probs /= probs.sum(1, keepdims=True)
    names = [f"class{c}" for c in range(classes)]
    oof = OutOfFold(np.arange(len(targets)) + 100, targets, probs, np.zeros(len(targets)), names)
    return oof, set(flipped + 100)


def test_classes_the_models_confuse_are_one_finding_not_label_errors():
    from cropdoc.audit.labels import label_issues, overlapping_classes

    oof, flips = _confused_scores()
    pairs = overlapping_classes(oof)
    assert [p["classes"] for p in pairs] == [(2, 3)] and pairs[0]["share"] >= 0.2
    predicted = oof.probs.argmax(1)
    crossed = oof.indices[(oof.targets >= 2) & (predicted != oof.targets)]
    assert sorted(pairs[0]["indices"]) == sorted(crossed.tolist()) and len(crossed) > 10
    found = label_issues(oof, skip=[(2, 3)])
    assert {f["index"] for f in found} == flips
    assert all(f["given"] == "class1" and f["suggested"] == "class0" for f in found)
    # without the pair left out, cleanlab calls some of the pair's photos label errors too
    assert set(crossed.tolist()) & {f["index"] for f in label_issues(oof)}
    # two classes: no pair to tell apart from the dataset itself
    assert overlapping_classes(dataclasses.replace(oof, classes=oof.classes[:2])) == []
    # a few mistakes between two classes (2 of their 80 photos) are no overlap
    sure = np.where(np.arange(4) == oof.targets[:, None], 0.91, 0.03)
    mistaken = np.flatnonzero(oof.targets == 2)[:2]
    sure[mistaken] = sure[np.flatnonzero(oof.targets == 3)[0]]  # predicted as class 3
    assert (sure.argmax(1) != oof.targets).sum() == 2
    assert overlapping_classes(dataclasses.replace(oof, probs=sure)) == []


def test_an_overlap_finding_is_written_and_drawn_with_its_photos(leaves, tmp_path):
    manifest, _ = leaves
    result = doctor(manifest, tmp_path / "doc", folds=0, settings={"cache": str(tmp_path / "c")})
    photos = [p for f in result.of_kind("duplicate") + result.of_kind("leak") for p in f.images]
    many = photos * 3
    note = "the folds' models put 37% of the photos ..."
    overlap = Finding("overlap", many, [None] * len(many), ["train"] * len(many), 0.37, note=note)
    result.findings.append(overlap)
    from cropdoc.audit.findings import GRID_COLS, GRID_THUMB, write
    from cropdoc.data.cache import Cache

    cache = Cache(tmp_path / "c")
    index = {e.path: i for i, e in enumerate(cache.images)}
    files = write(tmp_path / "doc", result, lambda p: cache.pixels(index[p]))
    grid = Image.open(files["grid-overlap.png"])
    assert len(overlap.images) > GRID_COLS and grid.width == GRID_COLS * (GRID_THUMB + 8) + 8
    assert np.asarray(grid).std() > 20  # photos drawn, not a blank canvas
    report = (tmp_path / "doc" / "report.md").read_text()
    assert "## overlap (1)" in report and "37%" in report
    saved = Findings.read(tmp_path / "doc")
    assert [f.kind for f in saved.of_kind("overlap")] == ["overlap"]


@pytest.mark.slow
def test_review_page_refuses_other_sites_rebinding_and_non_json_writes(leaves, tmp_path):
    """A page on another site open in the user's browser cannot save decisions (foreign
    Origin, a form or text/plain body, no token), and a rebinding name cannot read the
    findings; each refusal leaves decisions.csv as it was."""
    manifest, _ = leaves
    out, port = tmp_path / "doc", free_port()
    server = _start_review(manifest, out, port, tmp_path)
    decision = b'{"photo": 0, "decision": "drop"}'
    token = {"X-Cropdoc-Token": _token(port)}
    as_json = {"Content-Type": "application/json", **token}
    try:
        probes = [
            ({**as_json, "Origin": "http://evil.example"}, decision, 403),
            ({"Content-Type": "text/plain", **token}, decision, 415),
            ({"Content-Type": "application/x-www-form-urlencoded", **token}, b"photo=0", 415),
            ({"Content-Type": "application/json"}, decision, 403),  # no token
            ({"Content-Type": "application/json", "X-Cropdoc-Token": "guess"}, decision, 403),
            ({**as_json, "Host": f"evil.example:{port}"}, decision, 403),
        ]
        for headers, body, expected in probes:
            status, answer = _request(port, "POST", "/decision", body, headers)
            assert status == expected, (headers, answer)
            assert "Traceback" not in answer.decode()
        assert not (out / "decisions.csv").exists()
        status, answer = _request(port, "GET", "/findings", headers={"Host": "evil.example"})
        assert status == 403 and str(tmp_path) not in answer.decode()
        own = {**as_json, "Origin": f"http://127.0.0.1:{port}"}
        assert _request(port, "POST", "/decision", decision, own)[0] == 200
        assert "drop" in (out / "decisions.csv").read_text()
        status, answer = _request(port, "POST", "/decision", b"", as_json)
        assert status == 400 and b"image" not in answer  # speaks of a decision
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_doctor_mistakes_are_one_line_each(leaves, tmp_path):
    """A file as --out, a damaged doctor.json, a folder or an unreadable CSV as --apply:
    one line and exit 2, never a traceback, and no file of the user's changed."""
    manifest, _ = leaves
    cache = ["--cache", str(tmp_path / "c")]
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "doctor.json").write_text('{"data": ')
    huge = tmp_path / "huge.csv"
    huge.write_text("path,decision,label\n" + "x" * 140_000 + ",drop,\n")
    cases = [
        (["--folds", "0", "--out", a_file, *cache], "is a file"),
        (["--folds", "0", "--out", damaged, *cache], "doctor.json is damaged"),
        (["--apply", tmp_path, "--manifest", tmp_path / "clean.csv"], "is a folder"),
        (["--apply", huge, "--manifest", tmp_path / "clean.csv"], "not a readable CSV row"),
    ]
    for args, says in cases:
        done = cli_process.run("doctor", manifest, *args, timeout=120)
        assert done.returncode == 2, done.stderr
        last = done.stderr.splitlines()[-1]  # after prepare's progress lines, if any
        assert "Traceback" not in done.stderr and done.stderr.count("cropdoc: error:") == 1
        assert last.startswith("cropdoc: error:") and says in last
    assert a_file.read_text() == "mine"
    assert (damaged / "doctor.json").read_text() == '{"data": '
    assert not (tmp_path / "clean.csv").exists()


def test_folds_scored_before_are_read_back_and_only_the_rest_run(tmp_path):
    """A rerun hands the fold runner (here or Ray) only the folds without scores: one
    whose scores are on disk starts no training, no Ray cluster."""
    from cropdoc.audit.labels import SCORES, fold_folder, out_of_fold
    from cropdoc.config import TrainConfig
    from cropdoc.data.cache import open_cache
    from cropdoc.data.loader import split_cache

    manifest, _ = _colours(tmp_path / "data", per_class=4)
    cache = open_cache(manifest, tmp_path / "cache", 64, workers=1)
    config = TrainConfig(data=str(manifest), valid_pct=0.25)
    folder, handed = tmp_path / "folds", []

    def scores(fold: str) -> dict:
        valid = split_cache(cache, fold=(int(fold[0]), 2)).valid.tolist()
        return {"indices": valid, "probs": [[1, 0, 0]] * len(valid), "ood": [0.5] * len(valid)}

    def scored_before(fold: str) -> None:
        run = fold_folder(dataclasses.replace(config, fold=fold), folder)
        run.mkdir(parents=True)
        (run / SCORES).write_text(json.dumps(scores(fold)))

    def runner(configs, where, opened):
        handed.append([c.fold for c in configs])
        return [scores(c.fold) for c in configs]

    scored_before("1/2")
    oof = out_of_fold(config, 2, folder, cache, runner)
    assert handed == [["2/2"]] and sorted(oof.indices.tolist()) == list(range(12))
    scored_before("2/2")
    out_of_fold(config, 2, folder, cache, runner)
    assert handed == [["2/2"]]  # every fold scored before: the runner was not called
