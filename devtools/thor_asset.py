"""Sample asset contents in the shapes objathor writes and AI2-THOR and Holodeck read.

* ``<uid>.pkl.gz``: a THOR asset dict (mesh, colliders, texture paths, physical properties),
  pickled with protocol 4 and gzipped, as objathor's ``save_thor_asset_file`` does for ``.pkl.gz``
  (``compress_pickle.load`` and objathor's ``load_existing_thor_asset_file`` read it). The gzip
  header carries no timestamp, so the same seed gives the same bytes.
* ``clip_features.pkl`` and ``sbert_features.pkl``: the dicts objathor's
  ``generate_holodeck_features`` saves and Holodeck loads: ``uids`` plus float16 numpy arrays
  (``img_features`` of shape (n, 3 views, 768) and ``text_features`` (n, 768) for CLIP;
  ``text_features`` (n, 768) for SBERT), rows sorted by uid.
"""

from __future__ import annotations

import gzip
import pickle
import random
from pathlib import Path
from typing import Any

CLIP_DIM = 768
SBERT_DIM = 768
VIEWS = 3

# A unit box: 8 corners, 12 triangles.
_CORNERS = [(x, y, z) for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)]
_TRIANGLES = [0, 1, 3, 0, 3, 2, 4, 6, 7, 4, 7, 5, 0, 4, 5, 0, 5, 1,
              2, 3, 7, 2, 7, 6, 0, 2, 6, 0, 6, 4, 1, 5, 7, 1, 7, 3]


def thor_asset(uid: str, rng: random.Random, *, mass: float | None = None) -> dict[str, Any]:
    """A THOR asset dict for ``uid``: a scaled box with its collider and textures beside it."""
    scale = [round(rng.uniform(0.1, 2.0), 4) for _ in range(3)]
    vertices = [{"x": x * scale[0], "y": y * scale[1], "z": z * scale[2]} for x, y, z in _CORNERS]
    return {
        "name": uid,
        "vertices": vertices,
        "triangles": list(_TRIANGLES),
        "normals": [{"x": x * 2, "y": y * 2, "z": z * 2} for x, y, z in _CORNERS],
        "uvs": [{"x": round(rng.random(), 4), "y": round(rng.random(), 4)} for _ in _CORNERS],
        "albedoTexturePath": f"{uid}/albedo.jpg",
        "normalTexturePath": f"{uid}/normal.jpg",
        "emissionTexturePath": f"{uid}/emission.jpg",
        "colliders": [{"vertices": vertices, "triangles": list(_TRIANGLES)}],
        "physicalProperties": {
            "mass": mass if mass is not None else round(rng.uniform(0.1, 80), 2),
            "angularDrag": 0.05, "drag": 0, "useGravity": True,
        },
        "receptacleCandidate": rng.random() < 0.3,
        "yRotOffset": 0,
    }


def asset_pickle(asset: dict[str, Any]) -> bytes:
    """The bytes of ``<uid>.pkl.gz``: pickle protocol 4, gzip without a timestamp."""
    return gzip.compress(pickle.dumps(asset, protocol=4), compresslevel=6, mtime=0)


def write_features(features_dir: str | Path, uids: list[str], rng: random.Random) -> list[Path]:
    """clip_features.pkl and sbert_features.pkl for ``uids``; returns their paths."""
    import numpy as np

    order = sorted(uids)
    gen = np.random.default_rng(rng.getrandbits(32))
    n = len(order)
    clip = {
        "uids": order,
        "img_features": gen.standard_normal((n, VIEWS, CLIP_DIM)).astype("float16"),
        "text_features": gen.standard_normal((n, CLIP_DIM)).astype("float16"),
    }
    sbert = {"uids": order, "text_features": gen.standard_normal((n, SBERT_DIM)).astype("float16")}
    out = Path(features_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in (("clip_features.pkl", clip), ("sbert_features.pkl", sbert)):
        path = out / name
        path.write_bytes(pickle.dumps(data, protocol=4))
        paths.append(path)
    return paths
