"""ml.models is the one registry of model names and strategies: the API schema and the library agree with it."""

from __future__ import annotations

import typing

from app.schemas.api import FinetuneIn, ModelName, Strategy
from ml.models import (
    MODEL_NAMES,
    STRATEGY_NAMES,
    TRANSFER_STRATEGIES,
    available_models,
    get_model_class,
    model_strategies,
    models_with_strategy,
)


def test_every_registered_model_loads_under_its_name() -> None:
    assert available_models() == sorted(MODEL_NAMES)
    for name in MODEL_NAMES:
        assert get_model_class(name).name == name


def test_the_api_schema_lists_exactly_the_registry() -> None:
    assert typing.get_args(ModelName) == MODEL_NAMES
    assert typing.get_args(Strategy) == STRATEGY_NAMES
    schema = FinetuneIn.model_json_schema()["properties"]
    assert schema["model"]["enum"] == list(MODEL_NAMES)  # visible in OpenAPI
    assert set(STRATEGY_NAMES) == {st for m in MODEL_NAMES for st in model_strategies(m)}


def test_the_library_supports_what_the_registry_offers() -> None:
    # ml.transfer and ml.models.mtloc still keep their own tuples; they must not drift from the registry.
    from ml import transfer
    from ml.models import mtloc

    assert {m for m, st in TRANSFER_STRATEGIES.items() if "encoder" in st} == set(transfer.NET_MODELS)
    assert set(model_strategies("dnn")) == set(transfer.STRATEGIES)
    assert set(model_strategies("mtloc")) == set(mtloc.STRATEGIES)
    assert models_with_strategy("msta") == ["dnn", "cnnloc"]
    assert models_with_strategy("scratch") == list(MODEL_NAMES)
