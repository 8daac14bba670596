"""Indoor Location Competition 2020 trace reader: WiFi fingerprints and sensor windows.

A trace is one walk: a `#` header, then TAB-separated lines
`<unix ms> TYPE_... <values>` in near (not strict) time order, with sparse
ground-truth `TYPE_WAYPOINT` positions. Everything between waypoints is
labelled by linear interpolation in time (the competition's own convention).

Sources are streamed: a floor archive is read through `tarfile` in "r|*" mode,
one member at a time, so at most one trace (a few MB of text) is in memory;
nothing is extracted to disk. Parsing is a plain per-line loop that only
converts the fields of the line types it needs. Measured on site1/F1 (the
largest floor, 105 MB unpacked), one core, xz decompression included: scan
fingerprints 2.0 s CPU, sensor windows 4.5 s CPU, peak RSS about 70 MB
(28 MB of which is the interpreter with numpy).
"""

from __future__ import annotations

import io
import lzma
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, cast

import numpy as np

from ml.data._io import Source, as_path, is_binary, source_name
from ml.data.bssid import RSSI_MAX, RSSI_MIN, normalize_bssid
from ml.data.errors import DataFormatError
from ml.data.limits import INT64_MAX, INT64_MIN, check_fingerprint
from ml.types import Fingerprint, SensorData, WifiReading

MAX_TRACE_BYTES = 32 << 20
"""Refuse larger trace files: shipped traces are <= 4 MiB, so this only stops a bad upload from eating memory."""
ARCHIVE_SUFFIXES = (".tar.xz", ".tar.gz", ".tgz", ".txz", ".tar")
_SENSOR_TYPES = {"TYPE_ACCELEROMETER": "accel", "TYPE_GYROSCOPE": "gyro", "TYPE_MAGNETIC_FIELD": "mag"}
_ARCHIVE_ERRORS = (tarfile.TarError, lzma.LZMAError, zlib.error, EOFError, OSError)


@dataclass
class IlcTrace:
    """One parsed trace. Arrays are sorted by time (the file's line order is not)."""

    name: str  # where it came from, for error messages: "site1/F1/path_data_files/<id>.txt"
    trace_id: str  # file stem
    floor: str
    site_id: str | None
    device: str | None
    waypoints: np.ndarray  # (n, 3) float64: t_ms, x, y
    scan_times: np.ndarray  # (s,) int64, ascending, every scan (also outside the waypoint span)
    scans: list[list[WifiReading]]  # readings of each scan, ages relative to its scan time
    sensors: dict[str, np.ndarray] = field(default_factory=dict)  # "accel"/"gyro"/"mag" -> (k, 4) t_ms, x, y, z

    def position(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x, y at times `t` (ms) by linear interpolation between waypoints."""
        wt = self.waypoints[:, 0]
        return np.interp(t, wt, self.waypoints[:, 1]), np.interp(t, wt, self.waypoints[:, 2])

    @property
    def span(self) -> tuple[float, float]:
        """First and last waypoint time: the only interval where labels are interpolated, not guessed."""
        return float(self.waypoints[0, 0]), float(self.waypoints[-1, 0])


# ---------------------------------------------------------------------------- public readers


def read_ilc_fingerprints(source: Source) -> Iterator[Fingerprint]:
    """One fingerprint per WiFi scan (TYPE_WIFI lines sharing a timestamp) inside the waypoint span.

    `source`: a trace `.txt` path or file object, a directory of traces, or a
    `.tar`/`.tar.xz`/`.tar.gz` floor archive (path or binary file object).
    Scans before the first or after the last waypoint are dropped: they have
    no waypoint pair to interpolate between. Each reading's `age_ms` is scan
    time minus its `last_seen_ts`, clipped at 0.
    """
    for tr in iter_ilc_traces(source):
        yield from trace_fingerprints(tr)


def read_ilc_windows(
    source: Source,
    *,
    window_ms: int = 1000,
    stride_ms: int = 100,
    rate_hz: float = 10.0,
    max_gap_ms: float | None = None,
) -> Iterator[Fingerprint]:
    """Sensor windows ending at times t = first waypoint + k*stride_ms, up to the last waypoint.

    Each window holds the accelerometer, gyroscope and magnetometer samples in
    (t - window_ms, t], resampled by linear interpolation onto
    n = window_ms*rate_hz/1000 points spaced 1000/rate_hz ms apart and ending
    at t. A window is skipped when any of the three modalities is too sparse:
    fewer than 2 samples, or a gap longer than `max_gap_ms` (default: two
    output periods, 200 ms at 10 Hz) between consecutive samples or between
    the window edges and the nearest sample — such a window would be mostly
    made up by interpolation. (At the native ~50 Hz this only drops the first
    window(s) of a trace, before sensors start, and real data dropouts.)
    Grid points before the window's first sample (or after its last) take
    that sample's value: within the allowed gap, holding beats extrapolating.

    `wifi` is the latest scan at or before t (empty before the first scan),
    with ages relative to that scan's time — the same readings the scan
    fingerprint has, so a WiFi model sees identical inputs either way;
    `extra["wifi_ts"]` is the scan time (None when there is none) for callers
    that want staleness relative to t. x, y are interpolated at t.
    """
    spec = _window_spec(window_ms, stride_ms, rate_hz, max_gap_ms)
    for tr in iter_ilc_traces(source, sensors=True):
        yield from trace_windows(tr, spec)


def read_ilc_survey(
    source: Source,
    *,
    window_ms: int = 1000,
    stride_ms: int = 100,
    rate_hz: float = 10.0,
    max_gap_ms: float | None = None,
) -> Iterator[tuple[list[Fingerprint], list[Fingerprint]]]:
    """(scan fingerprints, sensor windows) of each trace, one trace per item, each trace parsed once.

    For survey uploads: a window's `extra["wifi_ts"]` equals the `timestamp`
    of its scan's fingerprint in the same item (same `path`) whenever that
    scan lies inside the waypoint span, so the store can reference the scan
    instead of copying it. Same rules as `read_ilc_fingerprints` and
    `read_ilc_windows`.
    """
    spec = _window_spec(window_ms, stride_ms, rate_hz, max_gap_ms)
    for tr in iter_ilc_traces(source, sensors=True):
        yield list(trace_fingerprints(tr)), list(trace_windows(tr, spec))


def load_ilc_floor(
    data_dir: str | os.PathLike[str], site: str, floor: str, kind: Literal["scans", "windows"] = "scans"
) -> list[Fingerprint]:
    """Every scan fingerprint (or sensor window) of `<data_dir>/ilc2020/<site>/<floor>.tar.xz`."""
    path = Path(data_dir) / "ilc2020" / site / f"{floor}.tar.xz"
    if not path.is_file():
        raise FileNotFoundError(path)
    reader = read_ilc_fingerprints if kind == "scans" else read_ilc_windows
    return list(reader(path))


def ilc_floors(data_dir: str | os.PathLike[str]) -> list[tuple[str, str, Path]]:
    """(site, floor, archive path) for every floor archive under `<data_dir>/ilc2020/`, sorted."""
    root = Path(data_dir) / "ilc2020"
    out = []
    for p in sorted(root.glob("*/*")) if root.is_dir() else []:
        suffix = next((s for s in ARCHIVE_SUFFIXES if p.name.endswith(s)), None)
        if suffix and p.is_file():
            out.append((p.parent.name, p.name[: -len(suffix)], p))
    return out


# ---------------------------------------------------------------------------- traces -> fingerprints


def trace_fingerprints(tr: IlcTrace) -> Iterator[Fingerprint]:
    lo, hi = tr.span
    keep = np.flatnonzero((tr.scan_times >= lo) & (tr.scan_times <= hi))
    xs, ys = tr.position(tr.scan_times[keep].astype(np.float64))
    for i, x, y in zip(keep.tolist(), xs.tolist(), ys.tolist(), strict=True):
        fp = Fingerprint(
            wifi=tr.scans[i],
            x=x,
            y=y,
            floor=tr.floor,
            device=tr.device,
            timestamp=int(tr.scan_times[i]),
            path=tr.trace_id,
            extra={"site_id": tr.site_id},
        )
        check_fingerprint(fp, tr.name)
        yield fp


@dataclass(frozen=True)
class _WindowSpec:
    window_ms: int
    stride_ms: int
    rate_hz: float
    n: int
    max_gap_ms: float

    def grid(self, t: float) -> np.ndarray:
        """The n resampling instants ending at t."""
        return t - (self.n - 1 - np.arange(self.n)) * (1000.0 / self.rate_hz)


def _window_spec(window_ms: int, stride_ms: int, rate_hz: float, max_gap_ms: float | None) -> _WindowSpec:
    if rate_hz <= 0 or stride_ms <= 0:
        raise ValueError("need stride_ms > 0 and rate_hz > 0")
    n = round(window_ms * rate_hz / 1000)
    if n < 2:
        raise ValueError("need window_ms * rate_hz / 1000 >= 2 output samples")
    gap = 2000.0 / rate_hz if max_gap_ms is None else float(max_gap_ms)
    return _WindowSpec(window_ms=window_ms, stride_ms=stride_ms, rate_hz=rate_hz, n=n, max_gap_ms=gap)


def trace_windows(tr: IlcTrace, spec: _WindowSpec) -> Iterator[Fingerprint]:
    lo, hi = tr.span
    times = lo + spec.stride_ms * np.arange(int((hi - lo) // spec.stride_ms) + 1)
    xs, ys = tr.position(times)
    scan_idx = np.searchsorted(tr.scan_times, times, side="right") - 1
    for t, x, y, si in zip(times.tolist(), xs.tolist(), ys.tolist(), scan_idx.tolist(), strict=True):
        arrays = [_resample(tr.sensors.get(k), t, spec) for k in ("accel", "gyro", "mag")]
        if any(a is None for a in arrays):
            continue
        fp = Fingerprint(
            wifi=list(tr.scans[si]) if si >= 0 else [],  # new list, shared (read-only) readings
            x=x,
            y=y,
            floor=tr.floor,
            device=tr.device,
            timestamp=round(t),
            path=tr.trace_id,
            sensors=SensorData(rate_hz=spec.rate_hz, accel=arrays[0], gyro=arrays[1], mag=arrays[2]),
            extra={"site_id": tr.site_id, "wifi_ts": int(tr.scan_times[si]) if si >= 0 else None},
        )
        check_fingerprint(fp, tr.name)
        yield fp


def _resample(samples: np.ndarray | None, t: float, spec: _WindowSpec) -> np.ndarray | None:
    """Samples in (t - window, t] interpolated onto the window grid; None when too sparse."""
    if samples is None or len(samples) == 0:
        return None
    ts = samples[:, 0]
    start = t - spec.window_ms
    i0, i1 = np.searchsorted(ts, [start, t], side="right")
    if i1 - i0 < 2:
        return None
    w = samples[i0:i1]
    edges = np.concatenate(([start], w[:, 0], [t]))
    if np.diff(edges).max() > spec.max_gap_ms:
        return None
    g = spec.grid(t)
    out = np.empty((spec.n, 3), dtype=np.float32)
    for k in range(3):
        out[:, k] = np.interp(g, w[:, 0], w[:, k + 1])
    return out


# ---------------------------------------------------------------------------- parsing one trace


def parse_ilc_trace(
    text: str,
    name: str = "<trace>",
    *,
    sensors: bool = False,
    floor_hint: str | None = None,
    rotation: bool = False,
) -> IlcTrace:
    """Parse one trace file's text. `name` is used in error messages and for the trace id (its stem).

    `sensors=False` skips converting the (many) motion-sensor lines, which the
    scan fingerprints do not need. `floor_hint` is used when the header has
    no FloorName (e.g. the archive folder name). `rotation=True` (with `sensors`) also keeps the
    TYPE_ROTATION_VECTOR samples as `sensors["rotation"]` (x, y, z of the quaternion; tracking replays).
    """
    p = _TraceParser(name, sensors, rotation)
    p.feed(text)
    return p.finish(floor_hint)


class _TraceParser:
    def __init__(self, name: str, sensors: bool, rotation: bool = False) -> None:
        self.name = name
        self.header: dict[str, str] = {}
        self.waypoints: list[tuple[float, float, float]] = []
        self.scans: dict[int, list[WifiReading]] = {}
        self.sensor_rows: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in _SENSOR_TYPES.values()}
        self.handlers: dict[str, Callable[[list[str]], None]] = {
            "TYPE_WIFI": self._wifi,
            "TYPE_WAYPOINT": self._waypoint,
        }
        if sensors:
            for typ, key in _SENSOR_TYPES.items():
                self.handlers[typ] = self._sensor_handler(key)
            if rotation:
                self.sensor_rows["rotation"] = []
                self.handlers["TYPE_ROTATION_VECTOR"] = self._sensor_handler("rotation")
        self.lines = 0

    def feed(self, text: str) -> None:
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        handlers = self.handlers
        lineno = 0
        try:
            # Hot loop (~1.5 M lines per floor): no per-line function call unless the type is wanted.
            for lineno, line in enumerate(text.split("\n"), 1):  # noqa: B007 - lineno is read in except
                if not line:
                    continue
                if line[0] == "#":
                    self._header(line)
                    continue
                parts = line.split("\t")
                h = handlers.get(parts[1]) if len(parts) > 1 else self._short
                if h is not None:
                    h(parts)
        except DataFormatError as e:
            raise DataFormatError(e.message, f"{self.name} line {lineno}") from None
        except (ValueError, IndexError) as e:
            raise DataFormatError(f"malformed line ({e})", f"{self.name} line {lineno}") from None
        self.lines = lineno

    def _header(self, line: str) -> None:
        for item in line.split("\t")[1:]:
            key, sep, value = item.partition(":")
            if sep and key not in self.header:
                self.header[key] = value.strip()

    def _short(self, parts: list[str]) -> None:
        raise DataFormatError("expected '<unix ms> TAB <TYPE> TAB values'")

    def _wifi(self, p: list[str]) -> None:
        # ssid, bssid, rssi, freq, last_seen: index from the end so an ssid containing a TAB cannot shift fields.
        if len(p) < 7:
            raise DataFormatError(f"TYPE_WIFI needs 7 fields, got {len(p)}")
        t = _time(p[0])
        rssi = float(p[-3])
        if not (RSSI_MIN <= rssi <= RSSI_MAX):
            raise DataFormatError(f"RSSI {p[-3]!r} outside [{RSSI_MIN:g}, {RSSI_MAX:g}] dBm")
        age = t - _time(p[-1])
        reading = WifiReading(bssid=normalize_bssid(p[-4]), rssi=rssi, age_ms=age if age > 0 else 0)
        scan = self.scans.get(t)
        if scan is None:
            self.scans[t] = [reading]
        else:
            scan.append(reading)

    def _waypoint(self, p: list[str]) -> None:
        t, x, y = float(_time(p[0])), float(p[2]), float(p[3])
        if not (np.isfinite(x) and np.isfinite(y)):
            raise DataFormatError("waypoint coordinates must be finite")
        self.waypoints.append((t, x, y))

    def _sensor_handler(self, key: str) -> Callable[[list[str]], None]:
        rows = self.sensor_rows[key]

        def handle(p: list[str]) -> None:
            rows.append((float(_time(p[0])), float(p[2]), float(p[3]), float(p[4])))

        return handle

    def finish(self, floor_hint: str | None) -> IlcTrace:
        if self.lines == 0:
            raise DataFormatError("empty trace file", self.name)
        if not self.waypoints:
            raise DataFormatError("trace has no TYPE_WAYPOINT line, so nothing in it can be labelled", self.name)
        floor = self.header.get("FloorName") or floor_hint
        if not floor:
            raise DataFormatError("no FloorName in the header and no floor folder to fall back on", self.name)
        wp = np.array(self.waypoints, dtype=np.float64)
        wp = wp[np.argsort(wp[:, 0], kind="stable")]
        scan_times = np.array(sorted(self.scans), dtype=np.int64)
        return IlcTrace(
            name=self.name,
            trace_id=Path(self.name).stem,
            floor=floor,
            site_id=self.header.get("SiteID") or None,
            device=" ".join(v for v in (self.header.get("Brand"), self.header.get("Model")) if v) or None,
            waypoints=wp,
            scan_times=scan_times,
            scans=[self.scans[t] for t in scan_times.tolist()],
            sensors={k: _sorted_rows(v) for k, v in self.sensor_rows.items() if v},
        )


def _time(v: str) -> int:
    """A line's unix-ms time; beyond 64 bits it is a malformed value, not a time."""
    t = int(v)
    if not INT64_MIN <= t <= INT64_MAX:
        raise DataFormatError(f"time {v[:40]!r} does not fit in 64 bits")
    return t


def _sorted_rows(rows: list[tuple[float, float, float, float]]) -> np.ndarray:
    a = np.array(rows, dtype=np.float64)
    return a[np.argsort(a[:, 0], kind="stable")]


# ---------------------------------------------------------------------------- sources


def iter_ilc_traces(source: Source, *, sensors: bool = False) -> Iterator[IlcTrace]:
    """Parsed traces of any accepted source, one at a time (see `read_ilc_fingerprints`)."""
    path = as_path(source)
    if path is not None:
        if path.is_dir():
            yield from _dir_traces(path, sensors)
            return
        with open(path, "rb") as f:
            yield from _stream_traces(f, path.name, sensors, _floor_hint(path.parts))
        return
    if not is_binary(source):
        text = cast(IO[str], source).read()
        name = source_name(source, "<trace>.txt")
        yield parse_ilc_trace(str(text), name, sensors=sensors)
        return
    yield from _stream_traces(cast(IO[bytes], source), source_name(source, "<upload>"), sensors, None)


def _floor_hint(parts: tuple[str, ...]) -> str | None:
    """Floor folder of a trace path: `<floor>/path_data_files/<id>.txt` -> "<floor>"."""
    if len(parts) >= 3 and parts[-2] == "path_data_files":
        return parts[-3]
    return parts[-2] if len(parts) >= 2 else None


def _dir_traces(root: Path, sensors: bool) -> Iterator[IlcTrace]:
    files = sorted(p for p in root.rglob("*.txt") if p.is_file())
    if not files:
        raise DataFormatError("no trace (.txt) files", root.name)
    for p in files:
        name = str(Path(root.name) / p.relative_to(root))
        data = _read_limited(p.open("rb"), name)
        yield _parse_bytes(data, name, sensors, _floor_hint(p.parts))


def _read_limited(f: IO[bytes], name: str) -> bytes:
    with f:
        data = f.read(MAX_TRACE_BYTES + 1)
    if len(data) > MAX_TRACE_BYTES:
        raise DataFormatError(f"trace larger than {MAX_TRACE_BYTES >> 20} MiB", name)
    return data


def _parse_bytes(data: bytes, name: str, sensors: bool, floor_hint: str | None) -> IlcTrace:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataFormatError(f"not UTF-8 text ({e.reason})", f"{name} line {line}") from None
    return parse_ilc_trace(text, name, sensors=sensors, floor_hint=floor_hint)


def _stream_traces(f: IO[bytes], name: str, sensors: bool, floor_hint: str | None) -> Iterator[IlcTrace]:
    """A binary stream holding either one trace's text or a (compressed) tar of traces."""
    head, f = _peek(f, 512)
    if not _looks_like_archive(head):
        yield _parse_bytes(_read_limited(f, name), name, sensors, floor_hint)
        return
    yield from _tar_traces(f, name, sensors)


def _looks_like_archive(head: bytes) -> bool:
    compressed = head.startswith((b"\xfd7zXZ\x00", b"\x1f\x8b", b"BZh"))
    return compressed or head[257:262] == b"ustar"


def _tar_traces(f: IO[bytes], name: str, sensors: bool) -> Iterator[IlcTrace]:
    stem = next((name[: -len(s)] for s in ARCHIVE_SUFFIXES if name.endswith(s)), name)
    where = name
    found = 0
    try:
        tar = tarfile.open(fileobj=f, mode="r|*")  # noqa: SIM115 - closed by the `with tar` below
    except _ARCHIVE_ERRORS as e:
        raise DataFormatError(f"not a readable tar archive ({e})", name) from None
    with tar:
        while True:
            try:
                member = tar.next()
                if member is None:
                    break
                where = f"{name}: {member.name}"
                if not (member.isfile() and member.name.endswith(".txt")):
                    continue
                if member.size > MAX_TRACE_BYTES:
                    raise DataFormatError(f"trace larger than {MAX_TRACE_BYTES >> 20} MiB", member.name)
                fobj = tar.extractfile(member)
                data = fobj.read() if fobj is not None else b""
            except _ARCHIVE_ERRORS as e:
                raise DataFormatError(f"truncated or corrupt archive ({type(e).__name__}: {e})", where) from None
            found += 1
            parts = tuple(member.name.split("/"))
            yield _parse_bytes(data, member.name, sensors, _floor_hint(parts) if len(parts) > 1 else stem)
    if not found:
        raise DataFormatError("archive holds no trace (.txt) files", name)


def _peek(f: IO[bytes], n: int) -> tuple[bytes, IO[bytes]]:
    """The first `n` bytes of `f` without losing them (seek back, or replay them if `f` cannot seek)."""
    if f.seekable():
        pos = f.tell()
        head = f.read(n)
        f.seek(pos)
        return head, f
    head = f.read(n)
    return head, io.BufferedReader(_Replay(head, f))


class _Replay(io.RawIOBase):
    """`head` followed by the rest of `f`: a peeked, non-seekable stream made whole again."""

    def __init__(self, head: bytes, f: IO[bytes]) -> None:
        self._head = head
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            k = min(len(b), len(self._head))
            b[:k] = self._head[:k]
            self._head = self._head[k:]
            return k
        data = self._f.read(len(b))
        b[: len(data)] = data
        return len(data)
