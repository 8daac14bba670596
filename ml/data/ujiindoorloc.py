"""UJIIndoorLoc CSV reader (UCI dataset 310, 529 columns, one scan a row).

Streams rows with the csv module so a 40 MB file (or an upload) is never held
in memory. Coordinates are kept as the raw EPSG:3857 values (float64): the
literature reports UJIIndoorLoc errors in these units, so converting them to
ground metres (x0.766) would make our numbers incomparable.
"""

from __future__ import annotations

import csv
import math
import os
import re
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, cast

from ml.data._io import Source, as_path, is_binary, open_text, source_name
from ml.data.bssid import normalize_bssid
from ml.data.errors import DataFormatError
from ml.data.limits import check_fingerprint
from ml.types import Fingerprint, WifiReading

NOT_HEARD = 100
UJI_RSSI_MIN, UJI_RSSI_MAX = -104.0, 0.0
REQUIRED_LABELS = ("LONGITUDE", "LATITUDE", "FLOOR", "BUILDINGID")
OPTIONAL_LABELS = ("SPACEID", "RELATIVEPOSITION", "USERID", "PHONEID", "TIMESTAMP")
_WAP = re.compile(r"WAP\d+")
ZIP_NAME = "ujiindoorloc.zip"
SPLIT_MEMBERS = {"train": "trainingData.csv", "validation": "validationData.csv"}


class _Header:
    """Column positions resolved once per file, so rows are parsed by index."""

    def __init__(self, names: list[str], where: str) -> None:
        names = [n.strip() for n in names]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataFormatError(f"duplicate columns: {', '.join(dup)}", where)
        unknown = [n for n in names if not _WAP.fullmatch(n) and n not in REQUIRED_LABELS + OPTIONAL_LABELS]
        if unknown:
            raise DataFormatError(f"unexpected columns: {', '.join(unknown[:5])}", where)
        missing = [n for n in REQUIRED_LABELS if n not in names]
        self.wap_idx = [i for i, n in enumerate(names) if _WAP.fullmatch(n)]
        if not self.wap_idx:
            missing.append("WAP001..WAP520 (at least one)")
        if missing:
            raise DataFormatError(f"missing columns: {', '.join(missing)}", where)
        self.names = names
        self.n = len(names)
        self.bssids = [normalize_bssid(names[i]) for i in self.wap_idx]
        self.col = {n: i for i, n in enumerate(names)}


def read_ujiindoorloc(source: Source, member: str | None = None) -> Iterator[Fingerprint]:
    """Stream the fingerprints of a UJIIndoorLoc CSV.

    `source` is a CSV path, a text or binary file object, or (with `member`)
    the UCI zip archive (path or seekable binary file). `member` is
    "trainingData.csv" or "validationData.csv", with or without the
    "UJIndoorLoc/" folder prefix. Only LONGITUDE, LATITUDE, FLOOR, BUILDINGID
    and one WAP column are required; absent optional labels become None.
    Rows in which no WAP was heard are yielded too (with `wifi == []`).
    """
    path = as_path(source)
    if member is None and path is not None and path.suffix.lower() == ".zip":
        raise DataFormatError(
            "a zip archive needs member='trainingData.csv' or 'validationData.csv'", source_name(source)
        )
    if member is not None:
        yield from _read_zip_member(source, member)
        return
    name = source_name(source, "ujiindoorloc.csv")
    with open_text(source) as f:
        yield from _read_csv(f, name)


def load_uji(data_dir: str | os.PathLike[str], split: str) -> list[Fingerprint]:
    """All fingerprints of one split ("train" or "validation") of `<data_dir>/ujiindoorloc.zip`."""
    if split not in SPLIT_MEMBERS:
        raise ValueError(f"split must be one of {sorted(SPLIT_MEMBERS)}, got {split!r}")
    return list(read_ujiindoorloc(Path(data_dir) / ZIP_NAME, member=SPLIT_MEMBERS[split]))


@contextmanager
def _zip_member(source: Source, member: str) -> Iterator[tuple[IO[bytes], str]]:
    where = source_name(source, ZIP_NAME)
    path = as_path(source)
    if path is None and not is_binary(source):
        raise DataFormatError("a zip archive must be given as a path or a binary file", where)
    try:
        zf = zipfile.ZipFile(path if path is not None else cast(IO[bytes], source))
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataFormatError(f"not a readable zip archive ({e})", where) from e
    with zf:
        want = member.replace("\\", "/").split("/")[-1]
        names = [i.filename for i in zf.infolist() if not i.is_dir()]
        match = [n for n in names if n == member or n.split("/")[-1] == want]
        if len(match) != 1:
            raise DataFormatError(f"member {member!r} not found (have: {', '.join(names)})", where)
        with zf.open(match[0]) as raw:
            yield raw, match[0].split("/")[-1]


def _read_zip_member(source: Source, member: str) -> Iterator[Fingerprint]:
    with _zip_member(source, member) as (raw, name), open_text(raw) as f:
        yield from _read_csv(f, name)


def _read_csv(f: IO[str], name: str) -> Iterator[Fingerprint]:
    reader = csv.reader(f)
    try:
        first = next(reader, None)
        if first is None:
            raise DataFormatError("empty file", name)
        header = _Header(first, f"{name} line 1")
        for row in reader:
            if not row:  # csv yields [] for blank lines; a trailing blank line is harmless
                continue
            yield _row(row, header, name, reader.line_num)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataFormatError(f"unreadable CSV ({e})", f"{name} line {reader.line_num + 1}") from e
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:  # a damaged archive surfaces while reading rows
        raise DataFormatError(f"corrupt compressed data ({e})", f"{name} line {reader.line_num + 1}") from e


def _row(row: list[str], h: _Header, name: str, line: int) -> Fingerprint:
    if len(row) != h.n:
        raise DataFormatError(f"{len(row)} fields, header has {h.n}", f"{name} line {line}")
    wifi: list[WifiReading] = []
    for bssid, j in zip(h.bssids, h.wap_idx, strict=True):
        v = row[j]
        if v == "100":  # fast path: ~96% of cells
            continue
        rssi = _number(v, name, line, h.names[j])
        if rssi == NOT_HEARD:
            continue
        if not (UJI_RSSI_MIN <= rssi <= UJI_RSSI_MAX):
            raise DataFormatError(
                f"RSSI {v!r} outside {UJI_RSSI_MIN:g}..{UJI_RSSI_MAX:g} (or 100 = not heard)",
                f"{name} line {line}, column {h.names[j]}",
            )
        wifi.append(WifiReading(bssid=bssid, rssi=rssi))
    lab = _Labels(row, h, name, line)
    user = lab.integer("USERID")
    ts = lab.integer("TIMESTAMP")
    fp = Fingerprint(
        wifi=wifi,
        x=lab.num("LONGITUDE"),
        y=lab.num("LATITUDE"),
        floor=str(lab.integer("FLOOR")),
        building=str(lab.integer("BUILDINGID")),
        device=_opt_str(lab.integer("PHONEID")),
        user=None if user in (None, 0) else str(user),  # 0 = not recorded (validationData)
        timestamp=None if ts is None else ts * 1000,
        path=None,
        extra={"space": lab.integer("SPACEID"), "relpos": lab.integer("RELATIVEPOSITION")},
    )
    check_fingerprint(fp, f"{name} line {line}", _COLUMNS)
    return fp


# Fingerprint field -> the CSV column it comes from (error messages name the column).
_COLUMNS = {
    "floor": "FLOOR",
    "building": "BUILDINGID",
    "device": "PHONEID",
    "user": "USERID",
    "timestamp": "TIMESTAMP",
    "x": "LONGITUDE",
    "y": "LATITUDE",
}


class _Labels:
    """Typed access to the label cells of one row, with errors naming the cell."""

    def __init__(self, row: list[str], h: _Header, name: str, line: int) -> None:
        self.row, self.h, self.name, self.line = row, h, name, line

    def num(self, col: str) -> float:
        v = _number(self.row[self.h.col[col]], self.name, self.line, col)
        if not math.isfinite(v):
            raise DataFormatError("not a finite number", f"{self.name} line {self.line}, column {col}")
        return v

    def integer(self, col: str) -> int | None:
        j = self.h.col.get(col)
        if j is None:
            return None
        v = self.row[j].strip()
        try:
            return int(v)
        except ValueError:
            f = _number(v, self.name, self.line, col)
            if not f.is_integer():
                where = f"{self.name} line {self.line}, column {col}"
                raise DataFormatError(f"{v!r} is not an integer", where) from None
            return int(f)


def _number(v: str, name: str, line: int, col: str) -> float:
    try:
        return float(v)
    except ValueError:
        raise DataFormatError(f"{v!r} is not a number", f"{name} line {line}, column {col}") from None


def _opt_str(v: int | None) -> str | None:
    return None if v is None else str(v)
