"""Readers: UJIIndoorLoc CSV, ILC 2020 traces, JSONL surveys.

Unit tests use only tests/fixtures and hand-built strings. Tests marked
`data` read the real datasets from ../shared/data (or $SITELOC_DATA_DIR) and
are skipped when those are absent; deselect them with `-m "not data"`.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import lzma
import os
import random
import shutil
import tarfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from ml.data.errors import DataFormatError
from ml.data.ilc2020 import (
    ilc_floors,
    iter_ilc_traces,
    parse_ilc_trace,
    read_ilc_fingerprints,
    read_ilc_survey,
    read_ilc_windows,
    trace_fingerprints,
)
from ml.data.jsonl import fingerprint_from_json, read_jsonl, write_jsonl
from ml.data.ujiindoorloc import load_uji, read_ujiindoorloc
from ml.types import Fingerprint, SensorData, WifiReading

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
UJI_TRAIN = FIXTURES / "uji_train_small.csv"
UJI_VALID = FIXTURES / "uji_validation_small.csv"
ILC_ARCHIVE = FIXTURES / "ilc_site1_F1_small.tar.xz"
ILC_SITE2_DIR = FIXTURES / "ilc_site2"
ILC_SITE2_TRACE = ILC_SITE2_DIR / "F2" / "path_data_files" / "5dd60b8950e04e0006f5669d.txt"
SURVEY = FIXTURES / "survey_small.jsonl"
SITE1_ID, SITE2_ID = "5dd3d7732a57a34356595932", "5dbc1d84c1eb61796cf7c010"
ILC_F1_IDS = {
    "5dd9e7c59191710006b57065",
    "5dd9efa5c5b77e0006b17365",
    "5dd9fd49c5b77e0006b173cc",
    "5dd9efa29191710006b5708a",
}

# ----------------------------------------------------------------------------- UJIIndoorLoc


def _data_lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) - 1


def test_uji_fixture_rows_and_labels() -> None:
    fps = list(read_ujiindoorloc(UJI_TRAIN))
    assert len(fps) == _data_lines(UJI_TRAIN) >= 260
    per_floor = Counter((fp.building, fp.floor) for fp in fps)
    assert set(b for b, _ in per_floor) == {"0", "1", "2"}
    assert len(per_floor) == 13 and min(per_floor.values()) >= 20
    for fp in fps:
        assert -7695.9 <= fp.x <= -7299.8 and 4864745.7 <= fp.y <= 4865017.4
        assert fp.timestamp is not None and fp.timestamp % 1000 == 0
        assert 1369872000000 <= fp.timestamp <= 1371772800000  # 2013-05-30 .. 2013-06-21
        assert fp.user is not None and 1 <= int(fp.user) <= 18
        assert fp.path is None and set(fp.extra) == {"space", "relpos"} and fp.extra["relpos"] in (1, 2)
        assert all(-104 <= r.rssi <= 0 and r.bssid.startswith("WAP") and r.age_ms is None for r in fp.wifi)
    empty_rows = sum(set(r.split(",")[:520]) == {"100"} for r in UJI_TRAIN.read_text().splitlines()[1:])
    assert sum(not fp.wifi for fp in fps) == empty_rows >= 2  # rows with no WAP heard are yielded too
    zero = [fp for fp in fps if any(r.rssi == 0 for r in fp.wifi)]
    assert zero and {fp.device for fp in zero} == {"19"}


def test_uji_row_mapping_matches_the_csv_cells() -> None:
    header, row = UJI_TRAIN.read_text().splitlines()[:2]
    cells = dict(zip(header.split(","), row.split(","), strict=True))
    fp = next(read_ujiindoorloc(UJI_TRAIN))
    heard = {k: float(v) for k, v in cells.items() if k.startswith("WAP") and v != "100"}
    assert {r.bssid: r.rssi for r in fp.wifi} == heard
    assert fp.x == float(cells["LONGITUDE"]) and fp.y == float(cells["LATITUDE"])
    assert (fp.floor, fp.building, fp.device, fp.user) == (
        cells["FLOOR"],
        cells["BUILDINGID"],
        cells["PHONEID"],
        cells["USERID"],
    )
    assert fp.timestamp == int(cells["TIMESTAMP"]) * 1000
    assert fp.extra == {"space": int(cells["SPACEID"]), "relpos": int(cells["RELATIVEPOSITION"])}


def test_uji_validation_fixture_has_no_user() -> None:
    fps = list(read_ujiindoorloc(UJI_VALID))
    assert len(fps) == 100
    assert all(fp.user is None and fp.extra == {"space": 0, "relpos": 0} for fp in fps)
    assert all(fp.wifi for fp in fps)


def _summary(fps: list[Fingerprint]) -> list[tuple[object, ...]]:
    return [(fp.x, fp.y, fp.floor, fp.timestamp, tuple((r.bssid, r.rssi) for r in fp.wifi)) for fp in fps]


def test_uji_sources_path_text_binary_and_zip(tmp_path: Path) -> None:
    expected = _summary(list(read_ujiindoorloc(UJI_VALID)))
    assert _summary(list(read_ujiindoorloc(str(UJI_VALID)))) == expected
    assert _summary(list(read_ujiindoorloc(io.StringIO(UJI_VALID.read_text())))) == expected
    raw = io.BytesIO(UJI_VALID.read_bytes())
    assert _summary(list(read_ujiindoorloc(raw))) == expected
    assert not raw.closed  # the caller's file object is left open

    data = tmp_path / "data"
    data.mkdir()
    with zipfile.ZipFile(data / "ujiindoorloc.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(UJI_TRAIN, "UJIndoorLoc/trainingData.csv")
        zf.write(UJI_VALID, "UJIndoorLoc/validationData.csv")
    zpath = data / "ujiindoorloc.zip"
    assert _summary(list(read_ujiindoorloc(zpath, member="validationData.csv"))) == expected
    assert _summary(list(read_ujiindoorloc(zpath, member="UJIndoorLoc/validationData.csv"))) == expected
    assert _summary(load_uji(data, "validation")) == expected
    assert len(load_uji(data, "train")) == _data_lines(UJI_TRAIN)
    with pytest.raises(DataFormatError, match="member"):
        list(read_ujiindoorloc(zpath))
    with pytest.raises(DataFormatError, match="not found"):
        list(read_ujiindoorloc(zpath, member="testData.csv"))
    with pytest.raises(ValueError):
        load_uji(data, "test")


def _uji_csv(header: list[str], *rows: list[str]) -> io.StringIO:
    return io.StringIO("\n".join(",".join(r) for r in [header, *rows]) + "\n")


UJI_LABELS = ["LONGITUDE", "LATITUDE", "FLOOR", "BUILDINGID", "SPACEID", "RELATIVEPOSITION", "USERID", "PHONEID"]
UJI_HEADER = ["WAP001", "WAP002", "WAP003", *UJI_LABELS, "TIMESTAMP"]
UJI_ROW = ["-50", "100", "-104", "-7500.5", "4864900.25", "2", "1", "106", "2", "2", "23", "1371713733"]


def _read_named(buf: io.StringIO, name: str = "bad.csv") -> list[Fingerprint]:
    buf.name = name
    return list(read_ujiindoorloc(buf))


def test_uji_minimal_csv() -> None:
    [fp] = _read_named(_uji_csv(UJI_HEADER, UJI_ROW))
    assert [(r.bssid, r.rssi) for r in fp.wifi] == [("WAP001", -50.0), ("WAP003", -104.0)]
    assert (fp.x, fp.y, fp.floor, fp.building, fp.device, fp.user) == (-7500.5, 4864900.25, "2", "1", "23", "2")
    # optional label columns may be absent
    [fp] = _read_named(
        _uji_csv(["WAP007", "LONGITUDE", "LATITUDE", "FLOOR", "BUILDINGID"], ["-60", "1", "2", "0", "0"])
    )
    assert (fp.device, fp.user, fp.timestamp, fp.extra) == (None, None, None, {"space": None, "relpos": None})


def _with(row: list[str], col: str, value: str) -> list[str]:
    out = list(row)
    out[UJI_HEADER.index(col)] = value
    return out


@pytest.mark.parametrize(
    ("header", "rows", "where", "message"),
    [
        ([h for h in UJI_HEADER if h != "LATITUDE"], [], "bad.csv line 1", "missing columns: LATITUDE"),
        ([*UJI_LABELS, "TIMESTAMP"], [], "bad.csv line 1", "WAP"),
        ([*UJI_HEADER, "COLOUR"], [], "bad.csv line 1", "unexpected columns: COLOUR"),
        (["WAP001", *UJI_HEADER], [], "bad.csv line 1", "duplicate columns: WAP001"),
        (UJI_HEADER, [UJI_ROW, _with(UJI_ROW, "WAP002", "abc")], "bad.csv line 3, column WAP002", "not a number"),
        (UJI_HEADER, [_with(UJI_ROW, "WAP003", "-105")], "bad.csv line 2, column WAP003", "outside"),
        (UJI_HEADER, [_with(UJI_ROW, "WAP001", "5")], "bad.csv line 2, column WAP001", "outside"),
        (UJI_HEADER, [_with(UJI_ROW, "WAP001", "")], "bad.csv line 2, column WAP001", "not a number"),
        (UJI_HEADER, [_with(UJI_ROW, "LATITUDE", "north")], "bad.csv line 2, column LATITUDE", "not a number"),
        (UJI_HEADER, [_with(UJI_ROW, "LATITUDE", "nan")], "bad.csv line 2, column LATITUDE", "finite"),
        (UJI_HEADER, [_with(UJI_ROW, "FLOOR", "1.5")], "bad.csv line 2, column FLOOR", "not an integer"),
        (UJI_HEADER, [UJI_ROW, UJI_ROW[:-1]], "bad.csv line 3", "11 fields, header has 12"),
    ],
)
def test_uji_malformed(header: list[str], rows: list[list[str]], where: str, message: str) -> None:
    with pytest.raises(DataFormatError) as ei:
        _read_named(_uji_csv(header, *rows))
    assert ei.value.where == where
    assert message in ei.value.message
    assert str(ei.value) == f"{where}: {ei.value.message}"


def test_uji_empty_and_non_utf8() -> None:
    with pytest.raises(DataFormatError, match="empty"):
        _read_named(io.StringIO(""))
    bad = io.BytesIO(("\n".join([",".join(UJI_HEADER), ",".join(UJI_ROW)]) + "\n").encode() + b"\xff\xfe,1\n")
    with pytest.raises(DataFormatError, match=r"UTF-8|unreadable"):
        list(read_ujiindoorloc(bad))


def test_uji_corrupt_zip(tmp_path: Path) -> None:
    bad = tmp_path / "ujiindoorloc.zip"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(DataFormatError) as ei:
        list(read_ujiindoorloc(bad, member="trainingData.csv"))
    assert ei.value.where == "ujiindoorloc.zip"


# ----------------------------------------------------------------------------- ILC 2020: hand-built traces

HEADER = (
    "#\tstartTime:900\n"
    "#\tSiteID:siteX\tSiteName:Mall of spaces\tFloorId:abc\tFloorName:F2\n"
    "#\tBrand:OPPO\tModel:PBCM10\tAndroidName:8.1.0\tAPILevel:27\t\n"
    "#\ttype:1\tname:BMI160 Accelerometer\tversion:1\tvendor:BOSCH\tresolution:0.002\tpower:0.18\tmaximumRange:39.2\n"
)


def _trace(lines: list[str], header: str = HEADER) -> str:
    return header + "\n".join(lines) + "\n#\tendTime:9000\n"


def _wifi(t: int, ssid: str, bssid: str, rssi: int, last_seen: int) -> str:
    return f"{t}\tTYPE_WIFI\t{ssid}\t{bssid}\t{rssi}\t2412\t{last_seen}"


BASIC_LINES = [
    "1000\tTYPE_DIST1\t1.0\t2.0\t3.0",
    "1000\tTYPE_WAYPOINT\t0.0\t0.0",
    _wifi(500, "early", "aa:bb:cc:dd:ee:00", -40, 400),  # before the first waypoint: dropped
    _wifi(2000, "my ssid with spaces", "AA:BB:CC:DD:EE:01", -50, 1500),
    _wifi(2000, "", "aa-bb-cc-dd-ee-02", -70, 2100),  # empty ssid; last_seen after the scan: age clipped to 0
    "2500\tTYPE_BEACON\tuuid\t0\t0\t-56\t-89\t32.1\tE0:78:A3:3E:99:F2\t2500",
    "2600\tTYPE_ROTATION_VECTOR\t0.1\t0.2\t0.3\t3",
    _wifi(4000, "x", "aa:bb:cc:dd:ee:01", -60, 3900),
    "5000\tTYPE_WAYPOINT\t20.0\t30.0",
    "3000\tTYPE_WAYPOINT\t20.0\t10.0",  # written after later lines (real traces do this)
    _wifi(6000, "late", "aa:bb:cc:dd:ee:03", -80, 6000),  # after the last waypoint: dropped
]


def test_ilc_scan_fingerprints_interpolate_between_waypoints() -> None:
    tr = parse_ilc_trace(_trace(BASIC_LINES), "site/F9/path_data_files/tr01.txt")
    assert tr.waypoints[:, 0].tolist() == [1000, 3000, 5000]
    assert tr.scan_times.tolist() == [500, 2000, 4000, 6000]
    fps = list(trace_fingerprints(tr))
    assert [fp.timestamp for fp in fps] == [2000, 4000]
    assert [(fp.x, fp.y) for fp in fps] == [(10.0, 5.0), (20.0, 20.0)]
    first = fps[0]
    assert [(r.bssid, r.rssi, r.age_ms) for r in first.wifi] == [
        ("aa:bb:cc:dd:ee:01", -50.0, 500),
        ("aa:bb:cc:dd:ee:02", -70.0, 0),
    ]
    assert (first.floor, first.building, first.device, first.path) == ("F2", None, "OPPO PBCM10", "tr01")
    assert first.extra == {"site_id": "siteX"} and first.sensors is None


def test_ilc_text_file_object_and_crlf() -> None:
    text = _trace(BASIC_LINES).replace("\n", "\r\n")
    buf = io.StringIO(text)
    buf.name = "tr02.txt"
    fps = list(read_ilc_fingerprints(buf))
    assert [fp.path for fp in fps] == ["tr02", "tr02"] and fps[1].wifi[0].rssi == -60.0


def _sensor_lines(t0: int, t1: int, skip: tuple[int, int] | None = None) -> list[str]:
    """50 Hz sensors linear in time, so resampling by linear interpolation is exact."""
    out = []
    for t in range(t0, t1 + 1, 20):
        out.append(f"{t}\tTYPE_ACCELEROMETER\t{t / 1000}\t1.0\t{-t / 1000}\t3")
        out.append(f"{t}\tTYPE_GYROSCOPE\t0.0\t{t / 100}\t0.5\t3")
        if not (skip and skip[0] < t < skip[1]):
            out.append(f"{t}\tTYPE_MAGNETIC_FIELD\t{t / 10}\t-20.0\t30.0\t3")
    return out


def _window_trace(skip: tuple[int, int] | None = None) -> str:
    lines = [
        "1000\tTYPE_WAYPOINT\t0.0\t0.0",
        "3000\tTYPE_WAYPOINT\t20.0\t10.0",
        "5000\tTYPE_WAYPOINT\t20.0\t30.0",
        _wifi(2000, "a", "aa:bb:cc:dd:ee:01", -50, 1500),
        _wifi(4000, "b", "aa:bb:cc:dd:ee:02", -60, 4000),
        *_sensor_lines(1000, 5000, skip),
    ]
    random.Random(0).shuffle(lines)  # sensor lines out of order must not matter
    return _trace(lines)


def _windows(text: str, **kw: float) -> list[Fingerprint]:
    buf = io.StringIO(text)
    buf.name = "w.txt"
    return list(read_ilc_windows(buf, **kw))  # type: ignore[arg-type]


def test_ilc_windows_resample_label_and_attach_wifi() -> None:
    wins = _windows(_window_trace())
    times = [fp.timestamp for fp in wins]
    # grid 1000, 1100, ... 5000; sensors start at 1000, so the first window with at most a 200 ms
    # leading gap ends at 1800 ((800, 1800] with the first sample at 1000)
    assert times == list(range(1800, 5001, 100))
    for fp in wins:
        t = fp.timestamp
        assert t is not None and fp.sensors is not None and fp.sensors.rate_hz == 10.0
        accel, gyro, mag = fp.sensors.accel, fp.sensors.gyro, fp.sensors.mag
        assert accel is not None and gyro is not None and mag is not None
        assert all(a.shape == (10, 3) and a.dtype == np.float32 for a in (accel, gyro, mag))
        # before the first sample (within the allowed gap) the first value is held, as np.interp does
        grid = np.maximum(t - 900 + 100 * np.arange(10), 1000)
        np.testing.assert_allclose(accel[:, 0], grid / 1000, rtol=1e-6)
        np.testing.assert_allclose(gyro[:, 1], grid / 100, rtol=1e-6)
        np.testing.assert_allclose(mag[:, 0], grid / 10, rtol=1e-6)
        x_exp = np.interp(t, [1000, 3000, 5000], [0, 20, 20])
        y_exp = np.interp(t, [1000, 3000, 5000], [0, 10, 30])
        assert (fp.x, fp.y) == pytest.approx((x_exp, y_exp))
        if t < 2000:
            assert fp.wifi == [] and fp.extra["wifi_ts"] is None
        else:
            scan_t = 2000 if t < 4000 else 4000
            assert fp.extra["wifi_ts"] == scan_t
            assert [r.age_ms for r in fp.wifi] == ([500] if scan_t == 2000 else [0])
        assert fp.path == "w" and fp.floor == "F2"


def test_ilc_windows_skip_sensor_gaps() -> None:
    # magnetometer silent between 3500 and 3800 (300 ms > the 200 ms allowed at 10 Hz)
    times = {fp.timestamp for fp in _windows(_window_trace(skip=(3500, 3800)))}
    assert times == set(range(1800, 5001, 100)) - set(range(3800, 4501, 100))
    # a looser gap rule keeps them
    assert len(_windows(_window_trace(skip=(3500, 3800)), max_gap_ms=350)) > len(times)


def test_ilc_windows_parameters() -> None:
    wins = _windows(_window_trace(), window_ms=2000, stride_ms=500, rate_hz=25.0)
    assert [fp.timestamp for fp in wins] == [3000, 3500, 4000, 4500, 5000]
    assert all(fp.sensors is not None and fp.sensors.accel.shape == (50, 3) for fp in wins)  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        _windows(_window_trace(), rate_hz=1.0)


@pytest.mark.parametrize(
    ("lines", "where", "message"),
    [
        (["1000\tTYPE_ACCELEROMETER\t1\t2\t3\t3"], "t.txt", "no TYPE_WAYPOINT"),
        (
            ["1000\tTYPE_WAYPOINT\t0\t0", "abc\tTYPE_WIFI\ts\taa:bb:cc:dd:ee:ff\t-50\t2412\t900"],
            "t.txt line 6",
            "malformed",
        ),
        (["1000\tTYPE_WAYPOINT\t0\t0", "1000\tTYPE_WIFI\ts\taa:bb:cc:dd:ee:ff\t-50\t2412"], "t.txt line 6", "7 fields"),
        (["1000\tTYPE_WAYPOINT\t0\t0", _wifi(1000, "s", "aa:bb:cc:dd:ee:ff", 12, 900)], "t.txt line 6", "RSSI"),
        (["1000\tTYPE_WAYPOINT\t0\t0", _wifi(1000, "s", "aa:bb:cc:dd:ee:ff", -130, 900)], "t.txt line 6", "RSSI"),
        (["1000\tTYPE_WAYPOINT\t0\t0", _wifi(1000, "s", "", -50, 900)], "t.txt line 6", "bssid"),
        (["1000\tTYPE_WAYPOINT\t0\t0", "1500\tTYPE_WAYPOINT\t1.0"], "t.txt line 6", "malformed"),
        (["1000\tTYPE_WAYPOINT\t0\t0", "1500\tTYPE_WAYPOINT\tnan\t1"], "t.txt line 6", "finite"),
        (["1000\tTYPE_WAYPOINT\t0\t0", "1500 TYPE_WAYPOINT 1 2"], "t.txt line 6", "TAB"),
    ],
)
def test_ilc_malformed_trace(lines: list[str], where: str, message: str) -> None:
    with pytest.raises(DataFormatError) as ei:
        parse_ilc_trace(_trace(lines), "t.txt")
    assert ei.value.where == where
    assert message in ei.value.message


def test_ilc_malformed_sensor_line_only_matters_for_windows() -> None:
    text = _trace(["1000\tTYPE_WAYPOINT\t0\t0", "1100\tTYPE_ACCELEROMETER\tx\t2\t3\t3"])
    parse_ilc_trace(text, "t.txt")  # scan fingerprints never look at sensor values
    with pytest.raises(DataFormatError) as ei:
        parse_ilc_trace(text, "t.txt", sensors=True)
    assert ei.value.where == "t.txt line 6"


def test_ilc_empty_and_headerless(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataFormatError, match="empty") as ei:
        list(read_ilc_fingerprints(empty))
    assert ei.value.where == "empty.txt"
    with pytest.raises(DataFormatError, match="FloorName"):
        parse_ilc_trace("1000\tTYPE_WAYPOINT\t0\t0\n", "t.txt")
    assert parse_ilc_trace("1000\tTYPE_WAYPOINT\t0\t0\n", "t.txt", floor_hint="B1").floor == "B1"
    bad_utf8 = tmp_path / "F1" / "path_data_files" / "u.txt"
    bad_utf8.parent.mkdir(parents=True)
    bad_utf8.write_bytes(b"1000\tTYPE_WAYPOINT\t0\t0\n1100\tTYPE_WIFI\t\xff\n")
    with pytest.raises(DataFormatError, match="UTF-8") as ei:
        list(read_ilc_fingerprints(bad_utf8))
    assert ei.value.where == "u.txt line 2"


def test_ilc_floor_falls_back_to_folder(tmp_path: Path) -> None:
    text = "1000\tTYPE_WAYPOINT\t0\t0\n" + _wifi(1000, "s", "aa:bb:cc:dd:ee:ff", -50, 900) + "\n"
    trace = tmp_path / "siteZ" / "B2" / "path_data_files" / "t1.txt"
    trace.parent.mkdir(parents=True)
    trace.write_text(text)
    assert [fp.floor for fp in read_ilc_fingerprints(trace)] == ["B2"]
    assert [fp.floor for fp in read_ilc_fingerprints(tmp_path / "siteZ")] == ["B2"]
    archive = tmp_path / "B3.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(trace, "t1.txt")  # at the archive root: the archive name is the floor
    assert [fp.floor for fp in read_ilc_fingerprints(archive)] == ["B3"]


# ----------------------------------------------------------------------------- ILC 2020: fixtures and archives


def _raw_in_span_wifi_lines() -> dict[str, int]:
    """Independent count, straight from the archive text: TYPE_WIFI lines within each trace's waypoint span."""
    out = {}
    with tarfile.open(ILC_ARCHIVE) as tar:
        for m in tar:
            if m.name.endswith(".txt"):
                f = tar.extractfile(m)
                assert f is not None
                rows = [ln.split("\t") for ln in f.read().decode().splitlines() if not ln.startswith("#")]
                wp = [int(r[0]) for r in rows if r[1] == "TYPE_WAYPOINT"]
                out[Path(m.name).stem] = sum(r[1] == "TYPE_WIFI" and min(wp) <= int(r[0]) <= max(wp) for r in rows)
    return out


def test_ilc_fixture_archive_fingerprints() -> None:
    traces = list(iter_ilc_traces(ILC_ARCHIVE))
    assert {tr.trace_id for tr in traces} == ILC_F1_IDS
    fps = list(read_ilc_fingerprints(ILC_ARCHIVE))
    assert Counter(fp.path for fp in fps) == {
        "5dd9e7c59191710006b57065": 1,
        "5dd9efa5c5b77e0006b17365": 5,
        "5dd9fd49c5b77e0006b173cc": 2,
        "5dd9efa29191710006b5708a": 6,
    }
    readings: Counter[str] = Counter()
    for fp in fps:
        tr = next(t for t in traces if t.trace_id == fp.path)
        lo, hi = tr.span
        wx, wy = tr.waypoints[:, 1], tr.waypoints[:, 2]
        assert fp.timestamp is not None and lo <= fp.timestamp <= hi
        assert wx.min() - 1e-9 <= fp.x <= wx.max() + 1e-9 and wy.min() - 1e-9 <= fp.y <= wy.max() + 1e-9
        assert (fp.floor, fp.device, fp.building, fp.extra) == ("F1", "OPPO PBCM10", None, {"site_id": SITE1_ID})
        assert fp.wifi
        for r in fp.wifi:
            assert r.age_ms is not None and r.age_ms >= 0
            assert len(r.bssid) == 17 and r.bssid == r.bssid.lower() and r.bssid.count(":") == 5
            assert -93 <= r.rssi <= -7
        readings[fp.path or ""] += len(fp.wifi)
    assert readings == _raw_in_span_wifi_lines()


def _fp_keys(fps: Iterator[Fingerprint]) -> list[tuple[object, ...]]:
    return [(fp.path, fp.timestamp, fp.x, fp.y, len(fp.wifi)) for fp in fps]


class _NoSeek(io.RawIOBase):
    """A pipe-like binary stream: read only, no seek (like a chunked upload body)."""

    def __init__(self, data: bytes) -> None:
        self._b = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = self._b.read(min(len(b), 4096))
        b[: len(chunk)] = chunk
        return len(chunk)


def test_ilc_archive_formats_and_streams_agree(tmp_path: Path) -> None:
    expected = _fp_keys(read_ilc_fingerprints(ILC_ARCHIVE))
    data = ILC_ARCHIVE.read_bytes()
    plain = lzma.decompress(data)
    (tmp_path / "F1.tar").write_bytes(plain)
    (tmp_path / "F1.tar.gz").write_bytes(gzip.compress(plain))
    for src in (tmp_path / "F1.tar", tmp_path / "F1.tar.gz", str(ILC_ARCHIVE), io.BytesIO(data)):
        assert _fp_keys(read_ilc_fingerprints(src)) == expected
    assert _fp_keys(read_ilc_fingerprints(_NoSeek(data))) == expected  # type: ignore[arg-type]
    # the same traces unpacked into a directory
    with tarfile.open(ILC_ARCHIVE) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    got = _fp_keys(read_ilc_fingerprints(tmp_path / "x" / "site1" / "F1"))
    assert sorted(got, key=str) == sorted(expected, key=str)


def test_ilc_other_site_trace() -> None:
    for src in (ILC_SITE2_TRACE, ILC_SITE2_DIR, io.BytesIO(ILC_SITE2_TRACE.read_bytes())):
        fps = list(read_ilc_fingerprints(src))
        assert len(fps) == 5
        assert {(fp.floor, fp.extra["site_id"]) for fp in fps} == {("F2", SITE2_ID)}
    site1 = {r.bssid for fp in read_ilc_fingerprints(ILC_ARCHIVE) for r in fp.wifi}
    site2 = {r.bssid for fp in read_ilc_fingerprints(ILC_SITE2_TRACE) for r in fp.wifi}
    assert not site1 & site2  # the README: no BSSID is seen in both sites


def test_ilc_fixture_windows() -> None:
    wins = list(read_ilc_windows(ILC_ARCHIVE))
    traces = {tr.trace_id: tr for tr in iter_ilc_traces(ILC_ARCHIVE)}
    assert {fp.path for fp in wins} == ILC_F1_IDS
    for fp in wins:
        tr = traces[fp.path or ""]
        lo, hi = tr.span
        assert fp.timestamp is not None and lo <= fp.timestamp <= hi and (fp.timestamp - lo) % 100 == 0
        assert fp.sensors is not None and fp.sensors.accel is not None and fp.sensors.accel.shape == (10, 3)
        assert 5 < float(np.linalg.norm(fp.sensors.accel, axis=1).mean()) < 15  # gravity is in there
        assert (fp.extra["wifi_ts"] is None) == (fp.wifi == [])
    # most grid points survive the gap rule (only the first second of each trace lacks sensor history)
    grid = sum(int((tr.span[1] - tr.span[0]) // 100) + 1 for tr in traces.values())
    assert grid - 12 * len(traces) <= len(wins) < grid


def test_ilc_survey_batches_one_trace_each_with_linked_windows() -> None:
    batches = list(read_ilc_survey(ILC_ARCHIVE, stride_ms=500))
    assert len(batches) == 4
    scans = [fp for fps, _ in batches for fp in fps]
    assert _fp_keys(iter(scans)) == _fp_keys(read_ilc_fingerprints(ILC_ARCHIVE))
    for fps, windows in batches:
        assert len({fp.path for fp in fps + windows}) == 1
        scan_times = {int(fp.timestamp or 0) for fp in fps}
        lo, hi = min(scan_times), max(scan_times)
        for w in windows:
            assert w.sensors is not None
            ts = w.extra["wifi_ts"]
            if isinstance(ts, int) and lo <= ts <= hi:
                assert ts in scan_times  # the scan the window carries is stored as a fingerprint
    expected = _fp_keys(read_ilc_windows(ILC_ARCHIVE, stride_ms=500))
    assert _fp_keys(w for _, ws in batches for w in ws) == expected


def _truncated(tmp_path: Path, cut: float) -> Path:
    p = tmp_path / "F1.tar.xz"
    data = ILC_ARCHIVE.read_bytes()
    p.write_bytes(data[: int(len(data) * cut)])
    return p


@pytest.mark.parametrize("cut", [0.02, 0.5, 0.98])
def test_ilc_truncated_archive(tmp_path: Path, cut: float) -> None:
    with pytest.raises(DataFormatError) as ei:
        list(read_ilc_fingerprints(_truncated(tmp_path, cut)))
    assert ei.value.where is not None and ei.value.where.startswith("F1.tar.xz")
    assert "corrupt" in ei.value.message or "truncated" in ei.value.message


def test_ilc_corrupt_and_empty_archives(tmp_path: Path) -> None:
    garbage = tmp_path / "g.tar.xz"
    garbage.write_bytes(b"\xfd7zXZ\x00" + bytes(range(256)) * 4)
    with pytest.raises(DataFormatError) as ei:
        list(read_ilc_fingerprints(garbage))
    assert ei.value.where is not None and ei.value.where.startswith("g.tar.xz")
    flipped = bytearray(ILC_ARCHIVE.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    with pytest.raises(DataFormatError):
        list(read_ilc_fingerprints(io.BytesIO(bytes(flipped))))
    no_traces = tmp_path / "none.tar"
    with tarfile.open(no_traces, "w") as tar:
        info = tarfile.TarInfo("site9/F1/floor_info.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(DataFormatError, match="no trace"):
        list(read_ilc_fingerprints(no_traces))
    empty_dir = tmp_path / "empty_dir"
    empty_dir.mkdir()
    with pytest.raises(DataFormatError, match="no trace"):
        list(read_ilc_fingerprints(empty_dir))


def test_ilc_trace_without_waypoints_in_archive_names_the_member(tmp_path: Path) -> None:
    archive = tmp_path / "F1.tar.xz"
    body = _trace(["1000\tTYPE_WIFI\ts\taa:bb:cc:dd:ee:ff\t-50\t2412\t900"]).encode()
    with tarfile.open(archive, "w:xz") as tar:
        info = tarfile.TarInfo("site1/F1/path_data_files/nowp.txt")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    with pytest.raises(DataFormatError, match="TYPE_WAYPOINT") as ei:
        list(read_ilc_fingerprints(archive))
    assert ei.value.where == "site1/F1/path_data_files/nowp.txt"


def test_ilc_floors_listing(tmp_path: Path) -> None:
    for site, floor in [("site1", "F1"), ("site1", "B1"), ("site2", "F3")]:
        (tmp_path / "ilc2020" / site).mkdir(parents=True, exist_ok=True)
        shutil.copy(ILC_ARCHIVE, tmp_path / "ilc2020" / site / f"{floor}.tar.xz")
    (tmp_path / "ilc2020" / "site1" / "notes.txt").write_text("not a floor")
    floors = ilc_floors(tmp_path)
    assert [(s, f) for s, f, _ in floors] == [("site1", "B1"), ("site1", "F1"), ("site2", "F3")]
    assert all(p.is_file() for _, _, p in floors)
    assert ilc_floors(tmp_path / "missing") == []


# ----------------------------------------------------------------------------- JSONL


def test_jsonl_fixture() -> None:
    fps = list(read_jsonl(SURVEY))
    assert len(fps) == 16
    scans, windows = fps[:10], fps[10:]
    assert all(fp.sensors is None for fp in scans)
    for fp in windows:
        assert fp.sensors is not None and fp.sensors.rate_hz == 10.0
        for a in (fp.sensors.accel, fp.sensors.gyro, fp.sensors.mag):
            assert a is not None and a.shape == (10, 3) and a.dtype == np.float32
    assert all(fp.floor == "F1" and fp.path in ILC_F1_IDS and 0 < len(fp.wifi) <= 12 for fp in fps)
    assert all(r.age_ms is not None and r.age_ms >= 0 for fp in fps for r in fp.wifi)


def _same(a: Fingerprint, b: Fingerprint) -> None:
    assert (a.x, a.y, a.floor, a.building, a.device, a.timestamp, a.path, a.user, a.extra) == (
        b.x,
        b.y,
        b.floor,
        b.building,
        b.device,
        b.timestamp,
        b.path,
        b.user,
        b.extra,
    )
    assert [(r.bssid, r.rssi, r.age_ms) for r in a.wifi] == [(r.bssid, r.rssi, r.age_ms) for r in b.wifi]
    assert (a.sensors is None) == (b.sensors is None)
    if a.sensors is not None and b.sensors is not None:
        assert a.sensors.rate_hz == b.sensors.rate_hz
        for k in ("accel", "gyro", "mag"):
            x, y = getattr(a.sensors, k), getattr(b.sensors, k)
            assert (x is None and y is None) or np.array_equal(x, y)


def test_jsonl_round_trip(tmp_path: Path) -> None:
    original = list(read_ujiindoorloc(UJI_VALID))[:5] + list(read_ilc_windows(ILC_SITE2_TRACE, stride_ms=2000))
    original.append(
        Fingerprint(
            wifi=[WifiReading("aa:bb:cc:dd:ee:ff", -61.5, 30)],
            x=1.25,
            y=-2.5,
            floor="B1",
            sensors=SensorData(rate_hz=50.0, accel=np.ones((3, 3), dtype=np.float32) / 3),
        )
    )
    buf = io.StringIO()
    assert write_jsonl(original, buf) == len(original)
    again = list(read_jsonl(io.StringIO(buf.getvalue())))
    assert len(again) == len(original)
    for a, b in zip(original, again, strict=True):
        _same(a, b)
    path = tmp_path / "s.jsonl"
    write_jsonl(original, path)
    for a, b in zip(original, read_jsonl(path), strict=True):
        _same(a, b)


def test_jsonl_normalises_and_skips_blank_lines() -> None:
    text = (
        '\n{"wifi": [{"bssid": "AA-BB-CC-DD-EE-FF", "rssi": -50, "ssid": "cafe", "freq": 2412}], '
        '"x": 1, "y": 2, "floor": 3, "building": 1}\n   \n'
        '{"wifi": [], "x": 0.5, "y": 0, "floor": "B1", "sensors": {"rate_hz": 10, "gyro": [[0, 0, 1], [0, 0, 2]]}}\n'
    )
    a, b = read_jsonl(io.BytesIO(text.encode()))
    assert (a.wifi[0].bssid, a.wifi[0].rssi, a.floor, a.building) == ("aa:bb:cc:dd:ee:ff", -50.0, "3", "1")
    assert b.sensors is not None and b.sensors.accel is None and b.sensors.mag is None
    assert b.sensors.gyro is not None and b.sensors.gyro.tolist() == [[0, 0, 1], [0, 0, 2]]


GOOD = '{"wifi": [{"bssid": "aa:bb:cc:dd:ee:ff", "rssi": -50}], "x": 1, "y": 2, "floor": "1"}'
DROP = object()


def _line(**fields: object) -> str:
    """A fingerprint JSON line: a valid minimal object with `fields` replaced (DROP removes one)."""
    obj: dict[str, object] = {"wifi": [], "x": 1, "y": 2, "floor": "1"}
    obj.update(fields)
    return json.dumps({k: v for k, v in obj.items() if v is not DROP})


def _ap(**fields: object) -> list[dict[str, object]]:
    ap: dict[str, object] = {"bssid": "aa:bb:cc:dd:ee:ff", "rssi": -50}
    ap.update(fields)
    return [{k: v for k, v in ap.items() if v is not DROP}]


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        ('{"wifi": [', None, "invalid JSON"),
        ("[1, 2]", None, "expected a JSON object"),
        (_line(wifi=DROP), "wifi", "missing"),
        (_line(x=DROP), "x", "missing"),
        (_line(x="1"), "x", "number"),
        (_line(x=float("nan")), "x", "finite"),
        (_line(floor=DROP), "floor", "missing"),
        (_line(floor=True), "floor", "string or integer"),
        (_line(floor=" "), "floor", "empty"),
        (_line(wifi={}), "wifi", "expected list"),
        (_line(wifi=[3]), "wifi[0]", "expected a JSON object"),
        (_line(wifi=_ap(bssid=DROP)), "wifi[0].bssid", "missing"),
        (_line(wifi=_ap(bssid="")), "wifi[0].bssid", "empty"),
        (_line(wifi=_ap(bssid=17)), "wifi[0].bssid", "expected str"),
        (_line(wifi=_ap(rssi=-121)), "wifi[0].rssi", "outside"),
        (_line(wifi=_ap(rssi="-50")), "wifi[0].rssi", "number"),
        (_line(wifi=_ap(age_ms=-1)), "wifi[0].age_ms", ">= 0"),
        (_line(wifi=_ap(freq="2.4G")), "wifi[0].freq", "number"),
        (_line(timestamp="now"), "timestamp", "integer"),
        (_line(sensors={"accel": [[1, 2, 3]]}), "sensors.rate_hz", "missing"),
        (_line(sensors={"rate_hz": 0}), "sensors.rate_hz", "> 0"),
        (_line(sensors={"rate_hz": 10, "mag": [[1, 2]]}), "sensors.mag", "[x, y, z]"),
        (_line(sensors={"rate_hz": 10, "mag": [[1, "a", 3]]}), "sensors.mag", "[x, y, z]"),
    ],
)
def test_jsonl_malformed(line: str, field: str | None, message: str) -> None:
    buf = io.StringIO(f"{GOOD}\n\n{line}\n{GOOD}\n")
    buf.name = "s.jsonl"
    with pytest.raises(DataFormatError) as ei:
        list(read_jsonl(buf))
    assert ei.value.where == "s.jsonl line 3" + (f", field {field}" if field else "")
    assert message in ei.value.message


def test_jsonl_bad_utf8() -> None:
    with pytest.raises(DataFormatError, match="UTF-8"):
        list(read_jsonl(io.BytesIO(GOOD.encode() + b"\n\xff\xfe\n")))


def test_fingerprint_from_json_default_where() -> None:
    with pytest.raises(DataFormatError) as ei:
        fingerprint_from_json({"wifi": [], "x": 1, "floor": "1"})
    assert ei.value.where == "fingerprint, field y"


# ----------------------------------------------------------------------------- robustness: only DataFormatError escapes


def _mutations(text: str, n: int, seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(n):
        i = rng.randrange(len(text))
        op = rng.choice(["delete", "letter", "tab", "newline", "cut"])
        if op == "delete":
            yield text[:i] + text[i + 1 :]
        elif op == "letter":
            yield text[:i] + "x" + text[i + 1 :]
        elif op == "tab":
            yield text[:i] + "\t" + text[i:]
        elif op == "newline":
            yield text[:i] + "\n" + text[i:]
        else:
            yield text[:i]


@pytest.mark.parametrize(
    ("text", "reader"),
    [
        (_window_trace(), lambda s: list(read_ilc_windows(io.StringIO(s)))),
        (_trace(BASIC_LINES), lambda s: list(read_ilc_fingerprints(io.StringIO(s)))),
        (
            "\n".join(",".join(r) for r in (UJI_HEADER, UJI_ROW, UJI_ROW)),
            lambda s: list(read_ujiindoorloc(io.StringIO(s))),
        ),
        (GOOD + "\n" + GOOD, lambda s: list(read_jsonl(io.StringIO(s)))),
    ],
)
def test_mutated_input_raises_only_data_format_error(text: str, reader: Callable[[str], object]) -> None:
    for mutated in _mutations(text, 300, seed=len(text)):
        with contextlib.suppress(DataFormatError):
            reader(mutated)


# ----------------------------------------------------------------------------- real data (../shared/data)


def _data_dir() -> Path:
    env = os.environ.get("SITELOC_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


DATA = _data_dir()
needs_uji = pytest.mark.skipif(not (DATA / "ujiindoorloc.zip").is_file(), reason=f"no {DATA}/ujiindoorloc.zip")


def _needs_floor(site: str, floor: str) -> pytest.MarkDecorator:
    path = DATA / "ilc2020" / site / f"{floor}.tar.xz"
    return pytest.mark.skipif(not path.is_file(), reason=f"no {path}")


@pytest.mark.data
@needs_uji
def test_real_uji_matches_readme() -> None:
    train, valid = load_uji(DATA, "train"), load_uji(DATA, "validation")
    assert (len(train), len(valid)) == (19_937, 1_111)
    assert Counter(fp.building for fp in train) == {"0": 5_249, "1": 5_196, "2": 9_492}
    assert Counter(fp.building for fp in valid) == {"0": 536, "1": 307, "2": 268}
    assert Counter((fp.building, fp.floor) for fp in train)[("2", "3")] == 2_709
    assert len({fp.device for fp in train}) == 16 and len({fp.device for fp in valid}) == 11
    assert len({fp.user for fp in train}) == 18 and {fp.user for fp in valid} == {None}
    assert len({r.bssid for fp in train for r in fp.wifi}) == 465
    assert len({r.bssid for fp in valid for r in fp.wifi}) == 367
    assert sum(not fp.wifi for fp in train) == 76
    assert np.mean([len(fp.wifi) for fp in train]) == pytest.approx(18.0, abs=0.05)
    assert max(len(fp.wifi) for fp in train) == 51
    assert len({(fp.x, fp.y) for fp in train}) == 692 and len({(fp.x, fp.y) for fp in valid}) == 1_068


@pytest.mark.data
@_needs_floor("site1", "B1")
def test_real_ilc_site1_b1_matches_readme() -> None:
    n_traces = n_waypoints = n_scans = n_lines = 0
    n_fps = 0
    bssids: set[str] = set()
    for tr in iter_ilc_traces(DATA / "ilc2020" / "site1" / "B1.tar.xz"):
        n_traces += 1
        n_waypoints += len(tr.waypoints)
        n_scans += len(tr.scans)
        n_lines += sum(len(s) for s in tr.scans)
        bssids.update(r.bssid for s in tr.scans for r in s)
        lo, hi = tr.span
        fps = list(trace_fingerprints(tr))
        assert len(fps) == int(((tr.scan_times >= lo) & (tr.scan_times <= hi)).sum())
        assert all(lo <= (fp.timestamp or 0) <= hi and fp.floor == "B1" for fp in fps)
        n_fps += len(fps)
    assert (n_traces, n_waypoints, n_scans, n_lines, len(bssids)) == (157, 965, 2_395, 299_269, 1_439)
    # README: 11,997 of all 12,393 scan groups lie within their trace's waypoint span (97%)
    assert 0.9 * n_scans <= n_fps < n_scans


@pytest.mark.data
@_needs_floor("site2", "F3")
def test_real_ilc_listing_and_windows() -> None:
    floors = ilc_floors(DATA)
    assert len(floors) == 9 and ("site2", "F3") in {(s, f) for s, f, _ in floors}
    wins = list(read_ilc_windows(DATA / "ilc2020" / "site2" / "F3.tar.xz", stride_ms=1000))
    assert len({fp.path for fp in wins}) == 37
    assert all(fp.sensors is not None and fp.extra["site_id"] == SITE2_ID for fp in wins)
