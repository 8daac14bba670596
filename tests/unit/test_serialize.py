"""The one stored format (ml.serialize) for artifacts that are not models: round trip, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml.models.mtloc import ImuArtifact
from ml.serialize import FORMAT_VERSION, ModelFormatError, dump_arrays, load_arrays
from ml.transfer import SourceArtifact


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"imu.weight_ih_l0": rng.standard_normal((8, 2)).astype(np.float32), "imu.bias": np.arange(4.0)}


def test_imu_artifact_round_trips_in_the_versioned_format() -> None:
    art = ImuArtifact(_arrays(), {"sites": ["a"], "imu_hidden": 2, "norm": {"mean": [0.0] * 3, "std": [1.0] * 3}})
    blob, config = art.dumps()
    config = json.loads(json.dumps(config))  # what the database gives back
    assert config["format_version"] == FORMAT_VERSION and config["artifact"] == "siteloc-mtloc-imu"
    back = ImuArtifact.loads(blob, config)
    assert sorted(back.arrays) == sorted(art.arrays)
    for k, v in art.arrays.items():
        np.testing.assert_array_equal(back.arrays[k], v)
        assert back.arrays[k].dtype == v.dtype
    assert back.config["sites"] == ["a"]


def test_source_artifact_round_trips_in_the_versioned_format() -> None:
    art = SourceArtifact("encoder", "dnn", _arrays(), {"strategy": "encoder", "model": "dnn", "sites": []})
    blob, config = art.dumps()
    back = SourceArtifact.loads(blob, json.loads(json.dumps(config)))
    assert (back.strategy, back.model) == ("encoder", "dnn")
    np.testing.assert_array_equal(back.arrays["imu.bias"], np.arange(4.0))


def test_wrong_format_version_or_kind_is_refused_with_a_clear_message() -> None:
    blob, config = ImuArtifact(_arrays(), {}).dumps()
    with pytest.raises(ModelFormatError, match=r"artifact format_version 99 \(this build reads 1\)"):
        ImuArtifact.loads(blob, {**config, "format_version": 99})
    with pytest.raises(ModelFormatError, match="format_version None"):
        ImuArtifact.loads(blob, {k: v for k, v in config.items() if k != "format_version"})
    with pytest.raises(ModelFormatError, match="not a 'siteloc-transfer-source' artifact"):
        SourceArtifact.loads(blob, config)
    with pytest.raises(ModelFormatError, match="not a 'x' artifact"):
        load_arrays(*dump_arrays(_arrays(), {}, kind="y"), kind="x")
