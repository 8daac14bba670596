"""Cut the small committed test fixtures out of ../shared/data (see tests/fixtures/README.md).

    python scripts/make_fixtures.py [--data-dir ../shared/data] [--out tests/fixtures]

Deterministic: the same input data gives byte-identical fixtures (fixed seed,
rows and trace ids chosen by rule, tar members copied with their original
metadata, xz preset fixed). UJIIndoorLoc rows and ILC trace files are copied
byte for byte, never rewritten.
"""

from __future__ import annotations

import argparse
import io
import lzma
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ml.data.ilc2020 import read_ilc_fingerprints, read_ilc_windows  # noqa: E402
from ml.data.jsonl import write_jsonl  # noqa: E402
from ml.types import Fingerprint  # noqa: E402

SEED = 20240603
UJI_PER_FLOOR = 20  # trainingData rows per (BUILDINGID, FLOOR): 13 floors -> 260 rows
UJI_VALIDATION_ROWS = 100
# Short site1/F1 traces (by size) covering: a single scan, scans after the last waypoint, 2 and 3 waypoints.
ILC_SITE1_F1 = (
    "5dd9e7c59191710006b57065",
    "5dd9efa5c5b77e0006b17365",
    "5dd9fd49c5b77e0006b173cc",
    "5dd9efa29191710006b5708a",
)
ILC_SITE2_F2 = "5dd60b8950e04e0006f5669d"  # 184 KB, 3 waypoints, 5 scans: the other-site trace
JSONL_SCANS, JSONL_WINDOWS, JSONL_TOP_APS = 10, 6, 12


def uji_lines(zip_path: Path, member: str) -> tuple[bytes, list[bytes]]:
    with zipfile.ZipFile(zip_path) as zf:
        data = zf.read(f"UJIndoorLoc/{member}")
    header, *rows = data.splitlines(keepends=True)
    return header, rows


def uji_train_rows(rows: list[bytes], rng: np.random.Generator) -> list[int]:
    """UJI_PER_FLOOR random rows of every (building, floor), plus the dataset's quirks:
    two rows with no WAP heard and two with a 0 dBm reading (PHONEID 19)."""
    cells = [r.rstrip(b"\r\n").split(b",") for r in rows]
    by_floor: dict[tuple[bytes, bytes], list[int]] = {}
    for i, c in enumerate(cells):
        by_floor.setdefault((c[523], c[522]), []).append(i)
    chosen: set[int] = set()
    for key in sorted(by_floor):
        chosen.update(rng.choice(by_floor[key], UJI_PER_FLOOR, replace=False).tolist())
    empty = [i for i, c in enumerate(cells) if all(v == b"100" for v in c[:520])]
    zero_dbm = [i for i, c in enumerate(cells) if b"0" in c[:520]]
    chosen.update(empty[:2] + zero_dbm[:2])
    return sorted(chosen)


def write_uji(data_dir: Path, out: Path, rng: np.random.Generator) -> None:
    zip_path = data_dir / "ujiindoorloc.zip"
    header, rows = uji_lines(zip_path, "trainingData.csv")
    (out / "uji_train_small.csv").write_bytes(header + b"".join(rows[i] for i in uji_train_rows(rows, rng)))
    header, rows = uji_lines(zip_path, "validationData.csv")
    pick = sorted(rng.choice(len(rows), UJI_VALIDATION_ROWS, replace=False).tolist())
    (out / "uji_validation_small.csv").write_bytes(header + b"".join(rows[i] for i in pick))


def copy_members(archive: Path, keep: set[str]) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """Members named in `keep` (and the directories above them), in archive order, with their data."""
    out = []
    with tarfile.open(archive, "r:xz") as tar:
        for m in tar:
            if m.name in keep or (m.isdir() and any(k.startswith(m.name + "/") for k in keep)):
                f = tar.extractfile(m) if m.isfile() else None
                out.append((m, f.read() if f else None))
    return out


def write_ilc(data_dir: Path, out: Path) -> None:
    keep = {"site1/F1/floor_info.json"} | {f"site1/F1/path_data_files/{t}.txt" for t in ILC_SITE1_F1}
    members = copy_members(data_dir / "ilc2020/site1/F1.tar.xz", keep)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    (out / "ilc_site1_F1_small.tar.xz").write_bytes(lzma.compress(buf.getvalue(), preset=9))

    name = f"site2/F2/path_data_files/{ILC_SITE2_F2}.txt"
    [(_, data)] = [(m, d) for m, d in copy_members(data_dir / "ilc2020/site2/F2.tar.xz", {name}) if m.isfile()]
    target = out / "ilc_site2" / "F2" / "path_data_files" / f"{ILC_SITE2_F2}.txt"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data or b"")


def strongest(fp: Fingerprint, k: int) -> Fingerprint:
    fp.wifi = sorted(fp.wifi, key=lambda r: -r.rssi)[:k]
    return fp


def write_survey(out: Path) -> None:
    """A small JSONL survey made with our own reader+writer from the site1/F1 fixture:
    the first scans, then sensor windows 1 s apart; WiFi cut to the strongest APs to stay small."""
    archive = out / "ilc_site1_F1_small.tar.xz"
    scans = [strongest(fp, JSONL_TOP_APS) for fp in read_ilc_fingerprints(archive)][:JSONL_SCANS]
    windows = [fp for fp in read_ilc_windows(archive, stride_ms=1000) if fp.wifi][:JSONL_WINDOWS]
    write_jsonl(scans + [strongest(fp, JSONL_TOP_APS) for fp in windows], out / "survey_small.jsonl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    write_uji(args.data_dir, args.out, np.random.default_rng(SEED))
    write_ilc(args.data_dir, args.out)
    write_survey(args.out)
    for p in sorted(args.out.rglob("*")):
        if p.is_file():
            print(f"{p.stat().st_size:>9,}  {p.relative_to(args.out)}")


if __name__ == "__main__":
    main()
