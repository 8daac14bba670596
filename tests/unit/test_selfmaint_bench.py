"""bench.selfmaint's survey upload files: a scan model's JSONL, a sensor-window model's ILC archive of exactly the
survey's traces (what the service cuts windows from), read back the way the service reads them."""

import tarfile
from pathlib import Path

from bench.selfmaint import survey_file
from ml.data.ilc2020 import IlcTrace, iter_ilc_traces, trace_fingerprints

FIXTURE = Path(__file__).parent.parent / "fixtures" / "ilc_site1_F1_small.tar.xz"


def _survey() -> list[IlcTrace]:
    traces = list(iter_ilc_traces(FIXTURE, sensors=True))
    assert len(traces) == 4
    return [tr for tr in traces if tr.trace_id in ("5dd9efa5c5b77e0006b17365", "5dd9efa29191710006b5708a")]


def test_window_model_gets_an_archive_of_only_the_survey_traces(tmp_path: Path) -> None:
    survey = _survey()
    f = survey_file(tmp_path, "survey", FIXTURE, survey, windows=True, stride_ms=500)
    assert f.fmt == "ilc2020" and f.window_stride_ms == 500
    with tarfile.open(f.path) as tar:
        assert sorted(m.name for m in tar) == sorted(tr.name for tr in survey)
    rows = f.rows
    assert rows and {r.path for r in rows} == {tr.trace_id for tr in survey}
    assert all(r.sensors is not None and r.sensors.accel is not None for r in rows)
    # one window every 500 ms between each trace's first and last waypoint (less the too-sparse ones)
    assert len(rows) <= sum(int((tr.span[1] - tr.span[0]) // 500) + 1 for tr in survey)
    assert len(f.rows) > len(survey_file(tmp_path, "coarse", FIXTURE, survey, windows=True, stride_ms=1000).rows)


def test_scan_model_gets_jsonl_of_the_survey_scans(tmp_path: Path) -> None:
    survey = _survey()
    f = survey_file(tmp_path, "survey", FIXTURE, survey, windows=False, stride_ms=500)
    assert f.fmt == "jsonl" and f.path.suffix == ".jsonl"
    rows = f.rows
    want = [fp for tr in survey for fp in trace_fingerprints(tr)]
    assert [(r.path, r.timestamp, r.x, r.y) for r in rows] == [(w.path, w.timestamp, w.x, w.y) for w in want]
    assert all(r.sensors is None for r in rows)
