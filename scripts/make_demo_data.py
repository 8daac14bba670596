"""Cut the demo dataset bundled with the package: UJIIndoorLoc building 0 (CC BY 4.0).

    python scripts/make_demo_data.py [--data-dir ../shared/data]

Writes app/demo_data/uji_b0_{training,validation}.csv.gz: every row of trainingData.csv and
validationData.csv with BUILDINGID == 0, columns unchanged (gzip, deterministic output).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "app" / "demo_data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = ap.parse_args()
    with zipfile.ZipFile(Path(args.data_dir) / "ujiindoorloc.zip") as zf:
        for member, name in (("trainingData.csv", "training"), ("validationData.csv", "validation")):
            with zf.open(f"UJIndoorLoc/{member}") as raw:
                rows = csv.reader(io.TextIOWrapper(raw, encoding="utf-8"))
                header = next(rows)
                b = header.index("BUILDINGID")
                out = OUT / f"uji_b0_{name}.csv.gz"
                with open(out, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, compresslevel=9) as gz:
                    text = io.TextIOWrapper(gz, encoding="utf-8", newline="")
                    w = csv.writer(text, lineterminator="\n")
                    w.writerow(header)
                    n = 0
                    for row in rows:
                        if row[b] == "0":
                            w.writerow(row)
                            n += 1
                    text.flush()
                    text.detach()
                print(f"{out}: {n} rows")


if __name__ == "__main__":
    main()
