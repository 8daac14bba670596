"""Survey files through the API: every supported format, and malformed files refused whole."""

from __future__ import annotations

import io
import lzma
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES
from tests.integration.conftest import ADMIN, Api

ILC = FIXTURES / "ilc_site1_F1_small.tar.xz"
UJI = FIXTURES / "uji_train_small.csv"
JSONL = FIXTURES / "survey_small.jsonl"


def _upload(api: Api, site_id: str, name: str, data: bytes, fmt: str, **form: str) -> Any:
    return api.post(
        f"/sites/{site_id}/surveys", files={"file": (name, data)}, data={"format": fmt, **form}, headers=ADMIN
    )


def _counts(api: Api, site_id: str) -> dict[str, int]:
    return dict(api.get(f"/sites/{site_id}", headers=ADMIN).json()["counts"])


@pytest.mark.parametrize(
    ("path", "fmt", "fingerprints", "paths"),
    [(ILC, "ilc2020", 14, 4), (UJI, "ujiindoorloc", 264, 0), (JSONL, "jsonl", 16, 3)],
)
def test_each_format_uploads(api: Api, path: Path, fmt: str, fingerprints: int, paths: int) -> None:
    site_id = api.create_site(f"upload {fmt}")
    r = _upload(api, site_id, path.name, path.read_bytes(), fmt)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["fingerprints"] + out["windows"] >= fingerprints and out["paths"] == paths
    assert _counts(api, site_id)["fingerprints"] == out["fingerprints"]


def test_ilc_archive_gives_scans_and_sensor_windows_and_trains(api: Api) -> None:
    site_id = api.create_site("mall F1")
    r = _upload(api, site_id, ILC.name, ILC.read_bytes(), "ilc2020", window_stride_ms="1000")
    assert r.status_code == 201, r.text
    out = r.json()
    assert out == {**out, "fingerprints": 14, "paths": 4} and out["windows"] > 20
    assert _counts(api, site_id)["windows"] == out["windows"]
    job = api.finetune(site_id)
    assert job["state"] == "succeeded", job


def _truncated_archive() -> bytes:
    data = ILC.read_bytes()
    return data[: len(data) // 2]


def _csv_bad_rssi() -> bytes:
    lines = UJI.read_text().splitlines()
    cells = lines[5].split(",")
    cells[3] = "loud"
    return "\n".join([lines[0], *lines[1:5], ",".join(cells), *lines[6:]]).encode()


def _csv_wrong_columns() -> bytes:
    return b"a,b,c\n1,2,3\n"


def _trace_without_waypoints() -> bytes:
    import tarfile

    with tarfile.open(ILC) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("5dd9efa29191710006b5708a.txt"))
        extracted = tar.extractfile(member)
        assert extracted is not None
        text = extracted.read().decode()
    return "\n".join(line for line in text.splitlines() if "TYPE_WAYPOINT" not in line).encode()


def _jsonl_bad_line() -> bytes:
    lines = JSONL.read_bytes().splitlines()
    return b"\n".join([*lines[:3], b'{"wifi": [], "x": "east"}', *lines[3:]])


@pytest.mark.parametrize(
    ("name", "make", "fmt", "needles"),
    [
        ("F1.tar.xz", _truncated_archive, "ilc2020", ["F1.tar.xz"]),
        ("bad.csv", _csv_bad_rssi, "ujiindoorloc", ["bad.csv line 6", "loud"]),
        ("cols.csv", _csv_wrong_columns, "ujiindoorloc", ["cols.csv", "columns"]),
        ("trace.txt", _trace_without_waypoints, "ilc2020", ["trace.txt", "WAYPOINT"]),
        ("s.jsonl", _jsonl_bad_line, "jsonl", ["line 4"]),
        ("x.xz", lambda: lzma.compress(b"not a tar"), "ilc2020", ["x.xz"]),
    ],
)
def test_malformed_files_are_422_and_keep_nothing(api: Api, name: str, make: Any, fmt: str, needles: list[str]) -> None:
    site_id = api.create_site(f"malformed {name}")
    r = _upload(api, site_id, name, make(), fmt)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    for needle in needles:
        assert needle in detail, detail
    assert _counts(api, site_id) == {"fingerprints": 0, "windows": 0, "queries": 0}


def test_bad_form_fields(api: Api) -> None:
    site_id = api.create_site("forms")
    r = _upload(api, site_id, "a.csv", UJI.read_bytes(), "excel")
    assert r.status_code == 422 and "format" in r.json()["detail"]
    r = api.post(
        f"/sites/{site_id}/surveys", data={"format": "jsonl"}, files={"other": ("a", io.BytesIO(b"x"))}, headers=ADMIN
    )
    assert r.status_code == 422 and "file" in r.json()["detail"]
    r = _upload(api, site_id, "a.tar.xz", ILC.read_bytes(), "ilc2020", window_stride_ms="fast")
    assert r.status_code == 422 and "window_stride_ms" in r.json()["detail"]
