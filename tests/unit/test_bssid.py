"""BSSID normalisation and the shared RSSI bounds."""

from __future__ import annotations

import math

import pytest

from ml.data.bssid import BSSID_MAX_LEN, RSSI_MAX, RSSI_MIN, check_rssi, normalize_bssid

CANON = "aa:bb:0c:dd:ee:0f"


@pytest.mark.parametrize(
    "raw",
    [
        "aa:bb:0c:dd:ee:0f",
        "AA:BB:0C:DD:EE:0F",
        "Aa:bB:0c:Dd:eE:0F",
        "aa-bb-0c-dd-ee-0f",
        "AA-BB-0C-DD-EE-0F",
        "aabb.0cdd.ee0f",
        "AABB.0CDD.EE0F",
        "aabb0cddee0f",
        "AABB0CDDEE0F",
        "  aa:bb:0c:dd:ee:0f\t",
    ],
)
def test_mac_spellings_become_lower_colon(raw: str) -> None:
    assert normalize_bssid(raw) == CANON


@pytest.mark.parametrize(
    "raw",
    [
        "WAP001",  # UJIIndoorLoc column names are kept verbatim (case too)
        "wap001",
        "ap 1",
        "x",
        "a" * BSSID_MAX_LEN,
        "aa:bb:cc:dd:ee",  # 5 octets: not a MAC, so an opaque id
        "aa:bb-cc:dd:ee:ff",  # mixed separators: not a MAC
        "aabbccddeeff00",  # 14 hex digits
        "gg:bb:cc:dd:ee:ff",
    ],
)
def test_other_identifiers_are_kept_verbatim(raw: str) -> None:
    assert normalize_bssid(raw) == raw


@pytest.mark.parametrize("raw", ["", "   ", "a" * (BSSID_MAX_LEN + 1), "café", "ap\x00", "tab\tinside", "\u00a0"])
def test_invalid_identifiers_raise_value_error(raw: str) -> None:
    with pytest.raises(ValueError, match="bssid"):
        normalize_bssid(raw)


@pytest.mark.parametrize("raw", [None, 123, b"aa:bb:cc:dd:ee:ff"])
def test_non_strings_raise_value_error(raw: object) -> None:
    with pytest.raises(ValueError, match="string"):
        normalize_bssid(raw)  # type: ignore[arg-type]


def test_rssi_bounds() -> None:
    assert (RSSI_MIN, RSSI_MAX) == (-120.0, 0.0)
    assert check_rssi(-120) == -120.0
    assert check_rssi(0) == 0.0
    assert check_rssi(-67.5) == -67.5
    assert isinstance(check_rssi(-50), float)


@pytest.mark.parametrize("bad", [-120.5, 0.1, 100, math.nan, math.inf, -math.inf, "-50", None, True])
def test_rssi_out_of_range_or_not_a_number(bad: object) -> None:
    with pytest.raises(ValueError, match="rssi"):
        check_rssi(bad)
