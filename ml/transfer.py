"""Cross-site transfer for the fingerprint networks `dnn` and `cnnloc` (issue 7).

The API the finetune job calls:

    # source side: built from a source site's survey (and, for msta, its trained network) and
    # stored with that site's model version as safetensors bytes + a JSON config
    art = make_source_artifact("dnn", "msta", {site_id: fingerprints}, params, seed=0)
    blob, config = art.dumps()
    art = SourceArtifact.loads(blob, config)

    # target side: never needs the source sites' raw data
    model, report = fit_transfer("dnn", "msta", target_fingerprints, [art_a, art_b], params,
                                 seed=0, progress=progress, device="cuda")

`fit_transfer` trains the plain network from scratch *and* the transferred one on the same
fit/hold-out split of the target's training data (whole paths when there are paths, else
survey positions), keeps whichever scores better on the hold-out ("never silently worse";
`keep_better`), calibrates its error_m on the hold-out, refits it on all the target rows
(`refit_all`) and returns it with a report that holds both candidates side by side.

Strategies: "scratch" (no sources), "encoder" (paper 003, `ml.transfer_encoder`) and "msta"
(paper 004, `ml.transfer_msta`). `params` is one flat dict: any field of `FPNetParams`,
`EncoderConfig`, `MstaConfig` or `TransferConfig`. Source and target must use the same network
kind and base shape (`latent`, `rep`, `channels`); everything else may differ, in particular
the AP vocabulary, floors and coordinate frame.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from ml.data.features import FingerprintSet
from ml.errors import InsufficientData, InvalidParams
from ml.models import get_model_class
from ml.models.base import LocModel, ProgressFn, QueryBatch, no_progress
from ml.models.fpmodel import (
    Candidate,
    FingerprintNet,
    FPNetParams,
    NetCallback,
    Prepared,
    Recipe,
    finalize,
    prepare,
    scratch_recipe,
    span_progress,
    train_candidate,
    train_site_model,
)
from ml.params import check_types
from ml.serialize import FORMAT_VERSION, dump_arrays, load_arrays
from ml.transfer_encoder import Base, EncoderConfig, check_base, encoder_recipe, pretrain_encoder
from ml.transfer_msta import MstaConfig, load_teachers, msta_recipe, teacher_data, train_teacher

ARTIFACT_KIND = "siteloc-transfer-source"
NET_MODELS = ("dnn", "cnnloc")
STRATEGIES = ("scratch", "encoder", "msta")


@dataclass(frozen=True)
class TransferConfig:
    keep_better: bool = True  # return the scratch network when it beats the transferred one on the hold-out


# ---------------------------------------------------------------- params


@dataclass(frozen=True)
class AllParams:
    net: FPNetParams
    encoder: EncoderConfig
    msta: MstaConfig
    transfer: TransferConfig

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self.net), **asdict(self.encoder), **asdict(self.msta), **asdict(self.transfer)}


def split_params(params: Mapping[str, Any] | None) -> AllParams:
    """One flat params dict -> the four settings dataclasses (unknown names are an error)."""
    params = dict(params or {})
    groups: dict[type, dict[str, Any]] = {FPNetParams: {}, EncoderConfig: {}, MstaConfig: {}, TransferConfig: {}}
    for key, value in params.items():
        owner = next((cls for cls in groups if key in {f.name for f in fields(cls)}), None)
        if owner is None:
            known = sorted(f.name for cls in groups for f in fields(cls))
            raise InvalidParams(f"unknown transfer param {key!r}; known: {known}")
        groups[owner][key] = tuple(value) if isinstance(value, list) else value
    net = FPNetParams.parse(groups[FPNetParams])
    for cls, what in ((EncoderConfig, "encoder"), (MstaConfig, "msta"), (TransferConfig, "transfer")):
        groups[cls] = check_types(cls, groups[cls], what)  # integral floats for int settings become ints
    msta = replace(MstaConfig(), **groups[MstaConfig])
    if len(msta.lambdas) != 4 or min(msta.lambdas) < 0 or sum(msta.lambdas) <= 0:
        raise InvalidParams("lambdas must be 4 non-negative weights (J_MAE, J_Sim, J_MI, J_FI), not all 0")
    if msta.teacher_reduce not in ("sum", "mean"):
        raise InvalidParams("teacher_reduce must be 'sum' or 'mean'")
    enc = replace(EncoderConfig(), **groups[EncoderConfig])
    return AllParams(net, enc, msta, replace(TransferConfig(), **groups[TransferConfig]))


# ---------------------------------------------------------------- source artifacts


@dataclass
class SourceArtifact:
    """What a source site's model version stores so that other sites can transfer from it.

    - strategy "encoder": `base.*` (the shared extractor pretrained on the artifact's sites) and,
      per pretraining site i, `site{i}.framer.*` (its encoder) and `site{i}.heads.*`.
    - strategy "msta": per source site i, `site{i}.gen.*` (its surrogate-teacher generator) and
      `site{i}.reg.*` (the source network's position regressor used in Expert Training).

    `config` is JSON: format_version, strategy, model, the sites (names, shapes, labels or
    teacher settings) and the params used. No raw fingerprints are stored.
    """

    strategy: str
    model: str
    arrays: dict[str, np.ndarray]
    config: dict[str, Any]

    @property
    def sites(self) -> list[str]:
        return [str(s["name"]) for s in self.config.get("sites", [])]

    def dumps(self) -> tuple[bytes, dict[str, Any]]:
        """(safetensors bytes, JSON config) in `ml.serialize`'s format."""
        return dump_arrays(self.arrays, self.config, kind=ARTIFACT_KIND)

    @classmethod
    def loads(cls, blob: bytes, config: Mapping[str, Any]) -> SourceArtifact:
        """ml.serialize.ModelFormatError for another artifact or an unknown format version."""
        arrays = load_arrays(blob, config, kind=ARTIFACT_KIND)
        return cls(str(config["strategy"]), str(config["model"]), arrays, dict(config))


def make_source_artifact(
    model_name: str,
    strategy: str,
    sites: Mapping[str, FingerprintSet],
    params: Mapping[str, Any] | None = None,
    *,
    source_models: Mapping[str, LocModel] | None = None,
    seed: int = 0,
    progress: ProgressFn = no_progress,
    device: str = "cpu",
) -> SourceArtifact:
    """Build the transferable part of one or more source sites.

    `sites`: site name -> that site's labelled training fingerprints. "encoder" pretrains one
    shared base on all of them jointly. "msta" needs each site's trained specialised network:
    pass it in `source_models` (the site's stored `dnn`/`cnnloc` version), else it is trained
    here from scratch; then one surrogate teacher per site is trained (Expert Training)."""
    _check_model(model_name)
    if strategy not in ("encoder", "msta"):
        raise InvalidParams(f"source artifacts exist for strategies 'encoder' and 'msta', not {strategy!r}")
    if not sites:
        raise InsufficientData("make_source_artifact needs at least one source site")
    ap = split_params(params)
    if strategy == "encoder":
        arrays, cfg = pretrain_encoder(model_name, sites, ap.net, ap.encoder.pretrain_epochs, seed, progress, device)
    else:
        arrays, cfg = _msta_teachers(model_name, sites, ap, source_models or {}, seed, progress, device)
    config = {
        "artifact": ARTIFACT_KIND,
        "format_version": FORMAT_VERSION,
        "strategy": strategy,
        "model": model_name,
        "seed": seed,
        "params": ap.to_json(),
        **cfg,
    }
    return SourceArtifact(strategy, model_name, arrays, config)


def _msta_teachers(
    model_name: str,
    sites: Mapping[str, FingerprintSet],
    ap: AllParams,
    source_models: Mapping[str, LocModel],
    seed: int,
    progress: ProgressFn,
    device: str,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    cls = net_class(model_name)
    arrays: dict[str, np.ndarray] = {}
    entries = []
    n = len(sites)
    for i, (name, fs) in enumerate(sites.items()):
        span = span_progress(progress, i / n, (i + 1) / n)
        model = source_models.get(name)
        trained_here = model is None
        if model is None:  # a stand-in for the site's stored network: the hold-out picks its epoch, no refit
            model = train_site_model(
                cls, fs, replace(ap.net, refit_all=False), seed, span_progress(span, 0.0, 0.6), device
            )
        if not isinstance(model, FingerprintNet) or model.name != model_name:
            raise ValueError(f"source model of {name!r} must be a trained {model_name!r}, got {type(model).__name__}")
        rows = fs.with_aps(model.aps)
        data = teacher_data(model, QueryBatch.from_set(rows), model.labels.encode(rows)[0])
        t_arrays, t_cfg = train_teacher(model, data, ap.msta, seed + i, span_progress(span, 0.6, 1.0))
        arrays.update({f"site{i}.{k}": v for k, v in t_arrays.items()})
        entries.append(
            {
                "name": name,
                "n_rows": len(fs),
                "teacher": t_cfg,
                "source_model": {"trained_here": trained_here, "shape": model.shape.to_json(), **_brief(model)},
            }
        )
    return arrays, {"sites": entries}


# ---------------------------------------------------------------- target side


def fit_transfer(
    model_name: str,
    strategy: str,
    target: FingerprintSet,
    sources: Sequence[SourceArtifact],
    params: Mapping[str, Any] | None = None,
    *,
    holdout: np.ndarray | None = None,
    seed: int = 0,
    progress: ProgressFn = no_progress,
    device: str = "cpu",
) -> tuple[FingerprintNet, dict[str, Any]]:
    """Train `model_name` for the target site with `strategy`; returns (model, report).

    The model is a plain `dnn`/`cnnloc` (serialise it with `ml.serialize.dumps`); the report is
    also stored in its config under "training". `holdout` as in `LocModel.fit`: given (the finetune
    pipeline's), the kept candidate is not refitted here but can be with `model.refit`."""
    cls = net_class(model_name)
    if strategy not in STRATEGIES:
        raise InvalidParams(f"strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    ap = split_params(params)
    prep = prepare(model_name, target, ap.net, seed, device, holdout)
    names = ["scratch"] if strategy == "scratch" else ["scratch", strategy]
    cands = train_candidates(prep, names, sources, ap, span_progress(progress, 0.0, 0.85))
    chosen = choose(cands, strategy, ap.transfer.keep_better)
    report = transfer_report(prep, cands, strategy, chosen, sources, ap)
    refit = None if holdout is None else False
    model = finalize(cls, cands[chosen], prep, report, span_progress(progress, 0.85, 1.0), refit=refit)
    progress(1.0, f"done: kept {chosen}")
    return model, model.training


def train_candidates(
    prep: Prepared,
    names: Sequence[str],
    sources: Sequence[SourceArtifact],
    ap: AllParams,
    progress: ProgressFn = no_progress,
    callbacks_for: Callable[[str], Sequence[NetCallback]] | None = None,
) -> dict[str, Candidate]:
    """Each named strategy trained on the same fit rows and scored on the same hold-out."""
    out: dict[str, Candidate] = {}
    for i, name in enumerate(names):
        recipe, extra = make_recipe(name, prep, sources, ap)
        cbs = callbacks_for(name) if callbacks_for else ()
        span = span_progress(progress, i / len(names), (i + 1) / len(names))
        out[name] = train_candidate(name, recipe, prep, span, cbs, extra)
    return out


def make_recipe(
    strategy: str, prep: Prepared, sources: Sequence[SourceArtifact], ap: AllParams
) -> tuple[Recipe, dict[str, Any]]:
    if strategy == "scratch":
        return scratch_recipe(prep), {}
    arts = [a for a in sources if a.strategy == strategy]
    if not arts:
        have = sorted({a.strategy for a in sources}) or ["none"]
        raise InsufficientData(f"strategy {strategy!r} needs {strategy} source artifacts; got: {', '.join(have)}")
    wrong = [a.model for a in arts if a.model != prep.kind]
    if wrong:
        raise InvalidParams(f"source artifacts of model {wrong[0]!r} cannot train a {prep.kind!r}")
    sites = [s for a in arts for s in a.sites]
    if strategy == "encoder":
        for a in arts:
            check_base(prep, a.config)
        recipe, extra = encoder_recipe(prep, [Base(a.arrays, a.config) for a in arts], ap.encoder)
        return recipe, {"sources": sites, **extra}
    if strategy == "msta":
        teachers = [t for a in arts for t in load_teachers(a.arrays, a.config, prep.device)]
        return msta_recipe(prep, teachers, ap.msta), {"sources": sites}
    raise ValueError(f"strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")


def choose(cands: Mapping[str, Candidate], strategy: str, keep_better: bool) -> str:
    """The strategy's candidate unless scratch scores better on the hold-out (and keep_better)."""
    if strategy == "scratch":
        return "scratch"
    t, s = cands[strategy].holdout, cands["scratch"].holdout
    if keep_better and t is not None and s is not None and s.score < t.score:
        return "scratch"
    return strategy


def transfer_report(
    prep: Prepared,
    cands: Mapping[str, Candidate],
    strategy: str,
    chosen: str,
    sources: Sequence[SourceArtifact],
    ap: AllParams,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "strategy": strategy,
        "model": prep.kind,
        "chosen": chosen,
        "keep_better": ap.transfer.keep_better,
        "sources": [s for a in sources if a.strategy == strategy for s in a.sites],
        "seed": prep.seed,
        "holdout_by": prep.split_by,
        "n_fit": len(prep.fit),
        "n_holdout": len(prep.hold) if prep.hold is not None else 0,
        "n_aps": len(prep.aps),
        "params": ap.to_json(),
        **{name: c.summary() for name, c in cands.items()},
    }
    s, t = cands["scratch"].holdout, cands[strategy].holdout
    if strategy != "scratch" and s is not None and t is not None and s.score > 0:
        report["holdout_gain_pct"] = round(100.0 * (s.score - t.score) / s.score, 2)
    return report


# ---------------------------------------------------------------- helpers


def _brief(model: FingerprintNet) -> dict[str, Any]:
    scratch = model.training.get("scratch") or {}
    return {"holdout": scratch.get("holdout"), "best_epoch": scratch.get("best_epoch")}


def _check_model(model_name: str) -> None:
    if model_name not in NET_MODELS:
        raise InvalidParams(f"transfer supports models {', '.join(NET_MODELS)}, not {model_name!r}")


def net_class(model_name: str) -> type[FingerprintNet]:
    _check_model(model_name)
    cls = get_model_class(model_name)
    assert issubclass(cls, FingerprintNet)
    return cls
