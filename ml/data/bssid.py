"""Access-point identifiers and RSSI bounds shared by the readers and the API.

MAC addresses arrive in many spellings (Android: `aa:bb:..`, Windows: `AA-BB-..`,
Cisco: `aabb.ccdd.eeff`, bare hex); normalising them here means one AP is one
model input column whatever client reported it. Non-MAC identifiers (such as
UJIIndoorLoc's anonymised `WAP001`) are kept verbatim.
"""

from __future__ import annotations

import re
from functools import lru_cache

RSSI_MIN = -120.0
"""Weakest RSSI (dBm) accepted anywhere; below this a value is a unit or sentinel mistake."""
RSSI_MAX = 0.0
"""Strongest RSSI (dBm) accepted; phones report 0 dBm (UJIIndoorLoc PHONEID 19) but never positive."""
BSSID_MAX_LEN = 64

_HEX = "[0-9A-Fa-f]"
_MAC_SEP = re.compile(rf"{_HEX}{{2}}([:-]){_HEX}{{2}}(?:\1{_HEX}{{2}}){{4}}")
_MAC_DOT = re.compile(rf"{_HEX}{{4}}\.{_HEX}{{4}}\.{_HEX}{{4}}")
_MAC_BARE = re.compile(rf"{_HEX}{{12}}")
_NON_HEX = re.compile(r"[^0-9a-f]")
_PRINTABLE = re.compile(r"[\x20-\x7e]+")


def normalize_bssid(s: str) -> str:
    """One canonical spelling of an access-point identifier.

    MAC addresses (upper/lower case; `:`, `-` or Cisco `.` separators; or 12 bare
    hex digits) become lower-case colon form `aa:bb:cc:dd:ee:ff`. Any other
    identifier of 1-64 printable ASCII characters, not all spaces, is kept
    verbatim. Surrounding whitespace is not part of an identifier and is
    stripped. Anything else raises ValueError.
    """
    if not isinstance(s, str):
        raise ValueError(f"bssid must be a string, got {type(s).__name__}")
    return _normalize(s)


@lru_cache(maxsize=1 << 16)
def _normalize(s: str) -> str:
    # Cached: a survey repeats the same few thousand BSSIDs millions of times.
    t = s.strip()
    if _MAC_SEP.fullmatch(t) or _MAC_DOT.fullmatch(t) or _MAC_BARE.fullmatch(t):
        h = _NON_HEX.sub("", t.lower())
        return ":".join(h[i : i + 2] for i in range(0, 12, 2))
    if not t:
        raise ValueError("bssid is empty")
    if len(t) > BSSID_MAX_LEN:
        raise ValueError(f"bssid longer than {BSSID_MAX_LEN} characters: {t[:20]!r}...")
    if not _PRINTABLE.fullmatch(t):
        raise ValueError(f"bssid must be printable ASCII: {t!r}")
    return t


def check_rssi(value: object) -> float:
    """`value` as a float dBm if it is a finite number in [RSSI_MIN, RSSI_MAX], else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"rssi must be a number, got {type(value).__name__}")
    v = float(value)
    if not (RSSI_MIN <= v <= RSSI_MAX):  # NaN fails the comparison too
        raise ValueError(f"rssi {value!r} outside [{RSSI_MIN:g}, {RSSI_MAX:g}] dBm")
    return v
