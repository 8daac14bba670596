"""Which site does a WiFi scan come from? Pure scoring, shared by `/locate` and `siteloc bench detect`.

A site is scored by how many of the scan's distinct BSSIDs its AP vocabulary
knows (equivalently the fraction of the scan it knows: the denominator is the
same for every site). Sites tied on that count are ordered by a caller-supplied
distance, typically the site model's nearest-fingerprint distance, which only
has to be computed for the tied sites. A scan whose BSSIDs no site knows is
"no match" (None): the service answers that with a 422 rather than a guess.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class SiteScore:
    site: str
    known: int  # distinct scan BSSIDs in the site's vocabulary
    fraction: float  # known / distinct scan BSSIDs
    distance: float | None = None  # tie-break distance, when one was needed


def score_sites(bssids: Iterable[str], vocabularies: Mapping[str, Collection[str]]) -> list[SiteScore]:
    """Every site's score, best first (most known BSSIDs; ties in site order)."""
    scan = set(bssids)
    n = max(len(scan), 1)
    scores = [SiteScore(site, len(scan.intersection(vocab)), 0.0) for site, vocab in vocabularies.items()]
    scores = [SiteScore(s.site, s.known, s.known / n) for s in scores]
    return sorted(scores, key=lambda s: -s.known)


def detect_site(
    bssids: Iterable[str],
    vocabularies: Mapping[str, Collection[str]],
    distance: Callable[[str], float] | None = None,
    min_known: int = 1,
) -> SiteScore | None:
    """The best-matching site, or None when no site knows at least `min_known` of the scan's BSSIDs.

    `distance(site)` (lower = closer) is only called for sites tied on the known count.
    """
    scores = score_sites(bssids, vocabularies)
    if not scores or scores[0].known < max(min_known, 1):
        return None
    tied = [s for s in scores if s.known == scores[0].known]
    if len(tied) == 1 or distance is None:
        return tied[0]
    with_d = [SiteScore(s.site, s.known, s.fraction, float(distance(s.site))) for s in tied]
    return min(with_d, key=lambda s: s.distance if s.distance is not None else float("inf"))
