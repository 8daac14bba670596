"""Shared helpers that lay the committed fixtures out as a benchmark data directory."""

from __future__ import annotations

import zipfile
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def uji_data_dir(root: Path) -> Path:
    """`root/data/ujiindoorloc.zip` holding the UJI fixture slices as trainingData/validationData."""
    data = root / "data"
    data.mkdir(exist_ok=True)
    with zipfile.ZipFile(data / "ujiindoorloc.zip", "w") as z:
        z.write(FIXTURES / "uji_train_small.csv", "UJIndoorLoc/trainingData.csv")
        z.write(FIXTURES / "uji_validation_small.csv", "UJIndoorLoc/validationData.csv")
    return data
