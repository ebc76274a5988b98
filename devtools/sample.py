"""Generate a synthetic objathor asset tree: realistic layout, annotations and junk.

Used by ``make demo``, the tests and the benchmarks. The same seed gives the
same tree, byte for byte. The contents are real in shape (see
:mod:`devtools.thor_asset`): each ``<uid>.pkl.gz`` is a THOR asset dict pickled
and gzipped as objathor saves it, and the features are the pickled numpy
arrays Holodeck reads, so objathor's own loaders can open them.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

from devtools.thor_asset import asset_pickle, thor_asset, write_features

CATEGORIES = [
    ("chair", "chair.n.01", ["wood", "fabric"]),
    ("table", "table.n.02", ["wood", "metal"]),
    ("lamp", "lamp.n.02", ["metal", "glass"]),
    ("mug", "mug.n.04", ["ceramic"]),
    ("bookshelf", "bookshelf.n.01", ["wood"]),
    ("plant", "pot_plant.n.01", ["plastic", "soil"]),
    ("sofa", "sofa.n.01", ["fabric", "wood"]),
    ("clock", "clock.n.01", ["plastic", "glass"]),
]

# Share of an asset's bytes per file, roughly as in real optimized assets.
_FILE_SHARES = {"albedo.jpg": 0.40, "normal.jpg": 0.30, "emission.jpg": 0.05}
_JPEG_MAGIC = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"


def make_uid(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def make_annotation(uid: str, rng: random.Random) -> dict[str, Any]:
    """An annotation with the fields objathor's annotation step writes."""
    category, synset, materials = rng.choice(CATEGORIES)
    height = round(rng.uniform(5, 200), 2)
    width = round(rng.uniform(5, 200), 2)
    depth = round(rng.uniform(5, 200), 2)
    comp = [rng.random() for _ in materials]
    total = sum(comp)
    return {
        "uid": uid,
        "category": category,
        "description": f"a {category}",
        "description_long": f"A {rng.choice(['small', 'large', 'old', 'modern'])} {category}.",
        "height": height,
        "width": width,
        "depth": depth,
        "max_dimension": max(height, width, depth),
        "volume": round(height * width * depth / 1000.0, 3),
        "materials": list(materials),
        "composition": [round(c / total, 4) for c in comp],
        "mass": round(rng.uniform(0.1, 80), 2),
        "receptacle": rng.random() < 0.3,
        "onCeiling": False,
        "onWall": rng.random() < 0.1,
        "onFloor": rng.random() < 0.6,
        "onObject": rng.random() < 0.3,
        "frontView": rng.randrange(4),
        "quality": rng.randrange(11),
        "synset": synset,
        "wn_version": "oewn:2022",
        "scale": round(rng.uniform(0.5, 2.0), 3),
        "z_axis_scale": rng.random() < 0.5,
        "annotation_info": {"vision_llm": "gpt-4o-2024-05-13", "text_llm": "gpt-4o-2024-05-13"},
        "near_synsets": {synset: 0.0},
        "pose_z_rot_angle": round(rng.uniform(0, 6.283), 4),
        "license_info": {
            "license": "by",
            "uri": f"https://sketchfab.com/3d-models/{uid}",
            "creator_username": f"user{rng.randrange(10_000)}",
            "creator_display_name": "Sample Creator",
            "creator_profile_url": "https://sketchfab.com/sample",
        },
    }


def make_thor_metadata(rng: random.Random) -> dict[str, Any]:
    def vec(lo: float, hi: float) -> dict[str, float]:
        return {k: round(rng.uniform(lo, hi), 4) for k in "xyz"}

    return {
        "assetMetadata": {
            "primaryProperty": "CanPickup",
            "secondaryProperties": [],
            "boundingBox": {"min": vec(-1, 0), "max": vec(0, 1)},
        },
        "objectMetadata": {"objectType": "Undefined", "name": "sample"},
    }


def write_gzip_json(path: Path, obj: Any) -> None:
    data = json.dumps(obj, sort_keys=True).encode()
    path.write_bytes(gzip.compress(data, mtime=0))


def make_sample_dataset(
    assets_dir: str | Path,
    n_assets: int = 20,
    *,
    seed: int = 0,
    asset_bytes: int = 48 * 1024,
    junk: bool = True,
    features_dir: str | Path | None = None,
) -> list[str]:
    """Write ``n_assets`` assets under ``assets_dir``; return their uids (sorted).

    ``asset_bytes`` is the average size of one asset folder's tar content.
    With ``junk`` the tree also holds macOS and lock-file junk that a release
    must leave out. With ``features_dir`` the CLIP and SBERT feature files
    (``clip_features.pkl``, ``sbert_features.pkl``) are written there too.
    """
    rng = random.Random(seed)
    root = Path(assets_dir)
    root.mkdir(parents=True, exist_ok=True)
    uids = []
    for i in range(n_assets):
        uid = make_uid(rng)
        uids.append(uid)
        d = root / uid
        d.mkdir(exist_ok=True)
        size = max(64, int(asset_bytes * rng.uniform(0.5, 1.5)))
        pkl = asset_pickle(thor_asset(uid, rng))  # what objathor's loaders read: a real THOR asset dict
        (d / f"{uid}.pkl.gz").write_bytes(pkl)
        rest = max(len(_FILE_SHARES) * 16, size - len(pkl))  # the textures make up the asset's size
        total_share = sum(_FILE_SHARES.values())
        for name, share in _FILE_SHARES.items():
            n = max(16, int(rest * share / total_share))
            (d / name).write_bytes(_JPEG_MAGIC + rng.randbytes(n - len(_JPEG_MAGIC)))
        write_gzip_json(d / "annotations.json.gz", make_annotation(uid, rng))
        (d / "thor_metadata.json").write_text(json.dumps(make_thor_metadata(rng), indent=2))
        if junk and i % 5 == 0:
            (d / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
            (d / "._albedo.jpg").write_bytes(b"\x00\x05\x16\x07")
            (d / f"{uid}.lock").write_text("")
    if junk:
        (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (root / "._.DS_Store").write_bytes(b"\x00\x05\x16\x07")
        (root / "optimize.lock").write_text("")
    if features_dir is not None:
        write_features(features_dir, uids, rng)
    return sorted(uids)
