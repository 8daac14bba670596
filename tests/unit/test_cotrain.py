"""Co-training update (ml.models.itoloc_cotrain) on a tiny real iToLoc model: queries from a shifted device teach it."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest

from ml.cotrain import CotrainConfig
from ml.data.features import FingerprintSet
from ml.evaluate import metrics
from ml.models.base import QueryBatch
from ml.models.itoloc import ITOLOC
from ml.models.itoloc_cotrain import cotrain_update
from tests.unit.test_itoloc import TINY, synthetic_site


def _mean(model: ITOLOC, fs: object) -> float:
    return float(metrics(model.predict(QueryBatch.from_set(fs)), fs)["mean_m"])  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def setting() -> tuple[ITOLOC, object, object, object]:
    train = synthetic_site(96, seed=0)
    later = synthetic_site(96, seed=5)
    later.rss = later.rss - 8.0  # a new phone model with 8 dB less gain, months later
    half = np.arange(len(later)) % 2 == 0
    return ITOLOC.fit(train, TINY, seed=0), train, later.subset(half), later.subset(~half)


def test_update_learns_from_unlabeled_queries_and_leaves_the_input_model_alone(setting: tuple) -> None:
    model, train, queries, unseen = setting
    before_unseen, before_train = _mean(model, unseen), _mean(model, train)
    weights = {k: v.copy() for k, v in model.arrays().items()}
    update = ITOLOC.from_state(model.arrays(), model.config())
    summary = cotrain_update(update, train, queries, {"max_rounds": 5, "epochs": 2}, seed=0)
    assert _mean(update, unseen) < before_unseen  # better on later queries it never saw
    assert _mean(update, train) <= before_train * 1.05  # and not worse on the survey
    assert all(np.array_equal(weights[k], v) for k, v in model.arrays().items())
    pools = [r["pool"] for r in summary["rounds"]]
    assert pools[:3] == [60, 120, 192]  # N_t = 60 * 2^t, capped at the 192 unlabeled queries
    assert sum(summary["accepted_total"]) > 0
    for j in range(3):  # every pool fingerprint is accounted for by exactly one test
        total = sum(r["pool"] for r in summary["rounds"])
        parts = (
            summary["accepted_total"][j]
            + summary["rejected_agreement"][j]
            + summary["rejected_confidence"][j]
            + summary["rejected_stability"][j]
        )
        assert parts == total


def test_smearing_rounds_lower_sigma_after_the_pool_is_exhausted(setting: tuple) -> None:
    model, train, queries, _ = setting
    update = ITOLOC.from_state(model.arrays(), model.config())
    params = {"max_rounds": 6, "epochs": 1, "smear_every": 2, "sigma": 0.7, "sigma_os": 0.1}
    summary = cotrain_update(update, train, queries, params, seed=0)
    smeared = [r["round"] for r in summary["rounds"] if r["smeared"]]
    assert smeared and all(summary["rounds"][i]["pool"] == 192 for i in smeared)
    assert summary["final_sigma"] == pytest.approx(0.7 - 0.1 * len(smeared))


def test_without_single_queries_the_rounds_learn_from_the_labelled_rows(setting: tuple) -> None:
    """An update with no single query to co-train on (only tracking sessions: their pseudo-labels are labelled rows
    beside the survey) still runs its rounds on the labelled rows, and learns the new phone from them."""
    model, train, queries, unseen = setting
    labelled = FingerprintSet(
        aps=list(train.aps),
        **{
            f.name: np.concatenate([getattr(train, f.name), getattr(queries, f.name)])
            for f in fields(train)
            if f.name not in ("aps", "sensors")
        },
    )  # the later phone's scans at their positions, as pseudo-labels from its walks would be
    update = ITOLOC.from_state(model.arrays(), model.config())
    summary = cotrain_update(update, labelled, queries.subset(np.zeros(0, dtype=np.int64)), {"max_rounds": 5}, seed=0)
    assert [r["pool"] for r in summary["rounds"]] == [0] * 5 and sum(summary["accepted_total"]) == 0
    assert _mean(update, unseen) < _mean(model, unseen)


def test_update_is_deterministic(setting: tuple) -> None:
    model, train, queries, unseen = setting
    outs = []
    for _ in range(2):
        update = ITOLOC.from_state(model.arrays(), model.config())
        cotrain_update(update, train, queries, {"max_rounds": 3, "epochs": 1}, seed=3)
        outs.append(update.predict(QueryBatch.from_set(unseen)).xy)
    np.testing.assert_allclose(outs[0], outs[1])


def test_bad_params_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        CotrainConfig.from_params({"rounds": 3})
    with pytest.raises(ValueError, match="sigma"):
        CotrainConfig.from_params({"sigma": 1.5})


def test_bench_cotrain_on_the_uji_fixtures_reports_before_after_and_the_guard(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from bench.cotrain import main
    from tests.fixture_data import uji_data_dir

    data = uji_data_dir(tmp_path)
    argv = ["uji", "--split", "phone", "--data-dir", str(data), "--out", str(tmp_path / "out")]
    argv += ["--params", json.dumps(TINY), "--cotrain-params", json.dumps({"max_rounds": 2, "pool_start": 10})]
    assert main(argv) == 0
    result = json.loads((tmp_path / "out" / "cotrain_uji_phone.json").read_text())
    assert result["n_queries_A"] + result["n_scored_B"] == 100  # the validation fixture, split in two halves
    assert result["n_fit"] + result["n_holdout"] == 264
    for part in ("before", "after"):
        assert set(result[part]) == {"A", "B", "holdout"} and result[part]["B"]["n"] == result["n_scored_B"]
    assert len(result["summary"]["rounds"]) == 2
    promoted = result["guard"]["promoted"]
    before, after = result["before"]["holdout"], result["after"]["holdout"]
    assert promoted == (after["mean_m"] <= before["mean_m"] * 1.02 and after["floor_hit"] >= before["floor_hit"] - 0.02)
    assert result["served_guard_on"] == (result["after"] if promoted else result["before"])
    # the second run reuses the cached model and gives the same answer
    assert main([*argv, "--tag", "again"]) == 0
    again = json.loads((tmp_path / "out" / "cotrain_uji_phone_again.json").read_text())
    assert again["train_time_s"] is None and again["after"] == result["after"]


def test_near_cells_and_radius_zero_is_the_papers_exact_cell_test(setting: tuple) -> None:
    from ml.models.itoloc_cotrain import _agreed

    model = setting[0]
    exact, wide = model.near_cells(0.0), model.near_cells(1e9)
    assert np.array_equal(exact, np.eye(len(exact), dtype=bool))
    same_floor = model.cell_fkey[:, None] == model.cell_fkey[None, :]
    assert np.array_equal(wide, same_floor)  # never across floors or buildings, however wide
    probs = np.zeros((3, 2, len(exact)))
    probs[:, 0, 0] = [0.9, 0.7, 0.5]  # modules 0 and 1 agree on cell 0
    probs[:, 1, :2] = [[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]]  # they disagree on row 1
    agree, label, conf = _agreed(probs, 2, exact)
    assert agree.tolist() == [True, False] and label[0] == 0 and conf[0] == pytest.approx(0.8)


def test_holdout_guard_allows_the_tolerance_and_no_more() -> None:
    from ml.cotrain import holdout_guard

    before = {"mean_m": 10.0, "floor_hit": 0.95}
    assert holdout_guard(before, {"mean_m": 10.19, "floor_hit": 0.95}, 0.02)[0]  # within 2%
    ok, reason = holdout_guard(before, {"mean_m": 10.21, "floor_hit": 0.99}, 0.02)
    assert not ok and "mean error 10.21" in reason
    ok, reason = holdout_guard(before, {"mean_m": 9.0, "floor_hit": 0.92}, 0.02)
    assert not ok and "floor hit" in reason  # better position does not excuse losing floors
    assert holdout_guard(before, {"mean_m": 9.0, "floor_hit": 0.94}, 0.02) == (
        True,
        "promoted: holdout mean error 9.00 m vs 10.00 m (tolerance 2%)",
    )
