"""The five sites of the transfer study, as train/test `FingerprintSet`s (cached on disk).

- `uji_b0`, `uji_b1`, `uji_b2`: UJIIndoorLoc building b as a site: trainingData rows of b to
  train, validationData rows of b to test.
- `ilc_site1`, `ilc_site2`: an ILC 2020 mall, all its floors (they share APs): each floor's
  paths split 75/25 (seed 0) exactly as `siteloc bench ilc`, the union of the parts per site.

Each site's vocabulary is the APs heard in its training rows. Parsed sets are cached as plain
`.npz` files (no pickles) under `.bench-cache/transfer/`, keyed by the split settings and a digest of the reader
code (`ml/data/`, this module), so that a cache built by an older reader is never read.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from bench.core import source_digest
from ml.data.features import FingerprintSet, build_set
from ml.data.splits import split_by_group, train_fraction_subset

UJI_SITES = ("uji_b0", "uji_b1", "uji_b2")
ILC_SITES = ("ilc_site1", "ilc_site2")
ALL_SITES = UJI_SITES + ILC_SITES
_NONE = "\x1fNone\x1f"  # None in cached string columns (numpy strips trailing NULs)
_OBJECT_COLUMNS = ("floor", "building", "path", "device", "user")
_NOT_CACHED = ("aps", "sensors")  # scan sets (what this module caches) carry no sensor windows


@dataclass
class SiteData:
    name: str
    train: FingerprintSet
    test: FingerprintSet
    description: str


def load_site(
    name: str, data_dir: Path, cache_dir: Path | None, test_fraction: float = 0.25, seed: int = 0
) -> SiteData:
    key = f"{name}" if name in UJI_SITES else f"{name}_test{test_fraction:g}_seed{seed}"
    key += f"_{source_digest('ml/data/*.py', 'bench/sites.py')}"  # never a cache an older reader built
    if cache_dir is not None:
        cached = _load_cached(cache_dir, key)
        if cached is not None:
            return SiteData(name, cached[0], cached[1], _describe(name, test_fraction, seed))
    train, test = _parse(name, data_dir, test_fraction, seed)
    if cache_dir is not None:
        _save_cached(cache_dir, key, train, test)
    return SiteData(name, train, test, _describe(name, test_fraction, seed))


def _describe(name: str, test_fraction: float, seed: int) -> str:
    if name in UJI_SITES:
        return f"UJIIndoorLoc building {name[-1]}: trainingData -> validationData rows of that building"
    split = f"{1 - test_fraction:g}/{test_fraction:g}"
    return f"ILC 2020 {name[4:]}, all floors: each floor's paths split {split} (seed {seed})"


def _parse(name: str, data_dir: Path, test_fraction: float, seed: int) -> tuple[FingerprintSet, FingerprintSet]:
    if name in UJI_SITES:
        from ml.data.ujiindoorloc import load_uji

        b = name[-1]
        tr = [fp for fp in load_uji(data_dir, "train") if fp.building == b]
        te = [fp for fp in load_uji(data_dir, "validation") if fp.building == b]
    elif name in ILC_SITES:
        from ml.data.ilc2020 import ilc_floors, load_ilc_floor

        site = name[4:]
        tr, te = [], []
        for s, floor, _ in ilc_floors(data_dir):
            if s != site:
                continue
            fps = load_ilc_floor(data_dir, site, floor)
            a, b_idx = split_by_group([fp.path for fp in fps], test_fraction, seed)
            tr += [fps[i] for i in a]
            te += [fps[i] for i in b_idx]
    else:
        raise ValueError(f"unknown site {name!r}; choose from {', '.join(ALL_SITES)}")
    if not tr or not te:
        raise FileNotFoundError(f"no data for site {name} under {data_dir}")
    train = build_set(tr)
    return train, build_set(te, train.aps)


def small_train(site: SiteData, fraction: float, seed: int) -> tuple[FingerprintSet, FingerprintSet]:
    """A seeded `fraction` of the site's training groups (paths; rows when there are none), over
    the APs heard in it, and the test set over the same vocabulary."""
    if fraction >= 1.0:
        return site.train, site.test
    idx = train_fraction_subset(site.train.path, fraction, seed)
    sub = site.train.subset(idx)
    heard = ~np.all(np.isnan(sub.rss), axis=0)
    aps = [a for a, h in zip(sub.aps, heard, strict=True) if h]
    return sub.with_aps(aps), site.test.with_aps(aps)


# ---------------------------------------------------------------- cache (plain arrays, no pickle)


def _save_cached(cache_dir: Path, key: str, train: FingerprintSet, test: FingerprintSet) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, np.ndarray] = {"aps": np.array(train.aps, dtype=str)}
    for part, fs in (("train", train), ("test", test)):
        for f in fields(fs):
            if f.name in _NOT_CACHED:
                continue
            col = getattr(fs, f.name)
            if f.name in _OBJECT_COLUMNS:
                col = np.array([_NONE if v is None else str(v) for v in col], dtype=str)
            out[f"{part}.{f.name}"] = col
    tmp = cache_dir / f"{key}.tmp.npz"
    np.savez(tmp, **out)  # type: ignore[arg-type]
    tmp.replace(cache_dir / f"{key}.npz")


def _load_cached(cache_dir: Path, key: str) -> tuple[FingerprintSet, FingerprintSet] | None:
    path = cache_dir / f"{key}.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        aps = [str(a) for a in z["aps"]]
        sets = []
        for part in ("train", "test"):
            cols = {}
            for f in fields(FingerprintSet):
                if f.name in _NOT_CACHED:
                    continue
                col = z[f"{part}.{f.name}"]
                if f.name in _OBJECT_COLUMNS:
                    col = np.array([None if v == _NONE else str(v) for v in col], dtype=object)
                cols[f.name] = col
            sets.append(FingerprintSet(aps=list(aps), **cols))
    return sets[0], sets[1]
