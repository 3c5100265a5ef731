"""Exact and near duplicates among a cache's photos, and the groups that straddle splits.

Exact copies share a content hash of their decoded pixels, so the same pixels saved again
(other metadata, another lossless file) count. Near copies are found in two steps:

1. candidates: a perceptual hash (imagehash's pHash, 64 bits) of each photo and of five
   crops of it (the four corners and the centre, 95% of each side); two photos are
   candidates when one's whole-photo hash is within ``CANDIDATE`` bits of any hash of the
   other, so a copy cropped by a few percent still meets its original;
2. check: the correlation of the two 32x32 grey thumbnails that matched (brightness and
   contrast do not change it) must reach ``similarity``.

On the demo photos, copies that were re-compressed, halved, brightened or cropped by up to
8% correlate at 0.84 or more, different photos at 0.57 at most (``docs/doctor.md``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cropdoc.core.progress import Progress
from cropdoc.data.cache import Cache

CROP = 0.05  # the crops hashed beside the whole photo keep 95% of each side
CANDIDATE = 14  # bits of 64 within which two hashes make a candidate pair
SIMILARITY = 0.8  # thumbnail correlation from which a candidate is a near copy
THUMB = 32
VIEW_SIDE = 256  # photos are hashed at most this large (the hashes look at 32x32)
BLOCK_CELLS = 20_000_000  # hash comparisons held in memory at once


@dataclass
class Fingerprints:
    """What the duplicate search knows of each photo of a cache."""

    digests: list[str]  # content hash of the decoded pixels
    hashes: np.ndarray  # (photos, views) uint64 pHash of the photo and its crops
    thumbs: np.ndarray  # (photos, views, THUMB * THUMB) uint8 grey thumbnails


def views(image: Image.Image) -> list[Image.Image]:
    """The photo and its five crops (four corners and centre, ``1 - CROP`` of each side)."""
    w, h = image.size
    dx, dy = round(CROP * w), round(CROP * h)
    return [
        image,
        image.crop((dx, dy, w, h)),
        image.crop((0, 0, w - dx, h - dy)),
        image.crop((dx, 0, w, h - dy)),
        image.crop((0, dy, w - dx, h)),
        image.crop((dx // 2, dy // 2, w - dx // 2, h - dy // 2)),
    ]


def fingerprints(cache: Cache) -> Fingerprints:
    """Hash every cached photo (its pixels, and the pHash and thumbnail of each view)."""
    import imagehash

    n = len(cache)
    digests, hashes = [], np.zeros((n, 6), np.uint64)
    thumbs = np.zeros((n, 6, THUMB * THUMB), np.uint8)
    with Progress(n, "fingerprint") as progress:
        for i in range(n):
            pixels = cache.pixels(i)
            digests.append(hashlib.sha1(pixels.tobytes() + str(pixels.shape).encode()).hexdigest())
            image = Image.fromarray(pixels)
            image.thumbnail((VIEW_SIDE, VIEW_SIDE))  # a full-resolution cache's photo too
            for v, view in enumerate(views(image)):
                bits = imagehash.phash(view).hash.ravel()
                hashes[i, v] = np.packbits(bits).view(">u8")[0]
                grey = view.convert("L").resize((THUMB, THUMB), Image.Resampling.BILINEAR)
                thumbs[i, v] = np.asarray(grey).ravel()
            progress.update()
    return Fingerprints(digests, hashes, thumbs)


def candidate_pairs(hashes: np.ndarray, within: int = CANDIDATE) -> np.ndarray:
    """``(pairs, 2)`` indices ``i < j`` whose whole-photo hash is within ``within`` bits of
    any view of the other; brute force a block of rows at a time (a pair costs 12 popcounts)."""
    n = len(hashes)
    whole = hashes[:, 0]
    block = max(1, BLOCK_CELLS // max(1, n * hashes.shape[1]))
    found = []
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        mine = np.bitwise_count(whole[rows, None, None] ^ hashes[None]).min(2)
        theirs = np.bitwise_count(hashes[rows, None, :] ^ whole[None, :, None]).min(2)
        near = np.minimum(mine, theirs) <= within
        i, j = np.nonzero(near)
        i += start
        keep = j > i
        found.append(np.stack([i[keep], j[keep]], 1))
    return np.concatenate(found) if found else np.zeros((0, 2), int)


def similarity(prints: Fingerprints, i: int, j: int, within: int = CANDIDATE) -> float:
    """The best thumbnail correlation of photos ``i`` and ``j`` over the views whose hashes
    met (whole against whole, whole against a crop, a crop against whole)."""
    pairs = [(0, 0)] + [(0, v) for v in range(1, 6)] + [(v, 0) for v in range(1, 6)]
    best = -1.0
    for a, b in pairs:
        if int(prints.hashes[i, a] ^ prints.hashes[j, b]).bit_count() <= within:
            best = max(best, _correlation(prints.thumbs[i, a], prints.thumbs[j, b]))
    return best


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float32) - a.mean()
    b = b.astype(np.float32) - b.mean()
    norm = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / norm if norm > 0 else float(np.array_equal(a, b))


@dataclass
class Group:
    """Photos that are copies of each other: cache indices, and how alike the least alike
    linked pair is (1.0 for pixel-identical photos)."""

    members: list[int]
    score: float
    exact: bool


def duplicate_groups(prints: Fingerprints, min_similarity: float = SIMILARITY) -> list[Group]:
    """Groups of exact and near copies (pairs linked through shared members)."""
    n = len(prints.digests)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    links: dict[tuple[int, int], float] = {}
    first: dict[str, int] = {}
    for i, digest in enumerate(prints.digests):
        if digest in first:
            links[(first[digest], i)] = 1.0
        else:
            first[digest] = i
    for i, j in candidate_pairs(prints.hashes):
        if (int(i), int(j)) not in links:
            score = similarity(prints, int(i), int(j))
            if score >= min_similarity:
                links[(int(i), int(j))] = score
    for i, j in links:
        parent[root(i)] = root(j)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(root(i), []).append(i)
    weakest: dict[int, float] = {}
    for (i, _), score in links.items():
        weakest[root(i)] = min(score, weakest.get(root(i), 1.0))
    return [
        Group(group, round(weakest[key], 4), len({prints.digests[i] for i in group}) == 1)
        for key, group in members.items()
        if len(group) > 1
    ]
