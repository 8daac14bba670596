"""Shared helpers that lay the committed fixtures out as a benchmark data directory."""

from __future__ import annotations

import zipfile
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def query_row(site: str, i: int) -> dict[str, object]:
    """A query-log row (as the query writer takes it) at x = i on floor "0" of `site`."""
    from app.services.ids import time_ordered_id

    return {
        "id": time_ordered_id(),
        "site_id": site,
        "wifi": [["ap", -50.0, None]],
        "x": float(i),
        "y": 0.0,
        "floor": "0",
        "error_m": 1.0,
        "model_name": "wknn",
        "model_version": 1,
    }


def uji_data_dir(root: Path) -> Path:
    """`root/data/ujiindoorloc.zip` holding the UJI fixture slices as trainingData/validationData."""
    data = root / "data"
    data.mkdir(exist_ok=True)
    with zipfile.ZipFile(data / "ujiindoorloc.zip", "w") as z:
        z.write(FIXTURES / "uji_train_small.csv", "UJIndoorLoc/trainingData.csv")
        z.write(FIXTURES / "uji_validation_small.csv", "UJIndoorLoc/validationData.csv")
    return data
