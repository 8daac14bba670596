"""Multi-surrogate-teacher assistance (paper 004): transfer without the source sites' raw data.

Expert Training (`train_teacher`, on the source side): the source site's trained specialised
network S_i gives, for every training fingerprint, its framer output Z^F, its representation
Z^E and its (normalised) position y. A surrogate teacher G_i = {F^G_i, E^G_i} (three fully
connected layers) learns to generate (Z^F, Z^E) from noise with a WGAN-GP critic, plus

- J_Sim: max(0, 1 - cos(arccos(mean_k cos(Z^E_S,k, Z^E_G,k)) + alpha)), alpha = 0.2 rad;
- J_MAE: |y_k - R_i(Z^E_G,k)| through the source's own regressor R_i (kept frozen).

Eq. 2 pairs the k-th generated representation with the k-th true location, so the teacher must
know which location it is generating for: here G_i is conditioned on the normalised position
(noise ++ y). That is our reading of the paper; it is also what makes the cross-mutual
information of Expert Distilling non-trivial (unconditioned noise would make the "joint" pairs
independent). A source site's model version stores G_i and R_i (`SourceArtifact` "msta").

Expert Distilling (`msta_recipe`, on the target): a fresh target network S is trained with
  (3.0 J_MAE + 0.5 J_Sim + 0.5 J_MI + 0.5 J_FI) / 4.5,
where J_MAE is the target task loss (distance + floor/building cross-entropy), and for every
teacher, conditioned on the batch's own normalised positions,
- J_Sim as above between Z^E_S and Z^E_G;
- J_MI: the Jensen-Shannon mutual-information estimate (Hjelm et al.) between Z^E_S and Z^E_G by
  one global estimator Psi for all teachers; the product of marginals is the batch rolled by one;
- J_FI: |sigma(T(Z^F_G, Z^E_G)) - sigma(T(Z^F_S, Z^E_S))|, sigma = sqrt of the top eigenvalue
  of the transmitting matrix T = (Zf^T Ze)^T (Zf^T Ze) (feature columns L2-normalised over the
  batch), found by power iteration; divided by sqrt(d_f d_e) so it lies in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ml.errors import InsufficientData, InvalidParams
from ml.models.base import ProgressFn, QueryBatch, no_progress
from ml.models.fpmodel import FingerprintNet, Prepared, Recipe
from ml.models.fpnets import SpecialisedNet, build_net, load_arrays, state_arrays
from ml.models.fptrain import TaskWeights, TrainData, adam, pretrain_sae, shuffled_batches, task_loss, trainable
from ml.seed import seeded
from ml.train import Callback, History, ProgressCallback, run_epochs


@dataclass(frozen=True)
class MstaConfig:
    """Settings of both MSTA phases."""

    lambdas: tuple[float, float, float, float] = (3.0, 0.5, 0.5, 0.5)  # J_MAE, J_Sim, J_MI, J_FI (normalised)
    margin_rad: float = 0.2  # J_Sim angular margin alpha
    teacher_reduce: str = "sum"  # "sum" over teachers (paper) | "mean"
    noise_dim: int = 32  # generator noise size (the condition y adds 2)
    gen_hidden: int = 256  # generator / critic width
    gan_steps: int = 1500  # generator updates in Expert Training
    n_critic: int = 5  # critic updates per generator update (WGAN-GP)
    gp_weight: float = 10.0  # gradient-penalty weight
    gan_lr: float = 1e-4  # Adam(0.5, 0.9) for generator and critic
    gan_batch: int = 128
    sim_weight: float = 1.0  # Expert Training: J_Sim beside the adversarial loss
    mae_weight: float = 1.0  # Expert Training: J_MAE through the source regressor
    mi_hidden: int = 128  # width of the mutual-information estimator Psi
    power_iters: int = 10  # power-iteration steps for sigma(T)


# ---------------------------------------------------------------- modules


class Generator(nn.Module):
    """Surrogate teacher: (noise, y) -> (Z^F, Z^E). F^G: two layers, E^G: one."""

    def __init__(self, noise_dim: int, hidden: int, latent: int, rep: int) -> None:
        super().__init__()
        self.framer = nn.Sequential(nn.Linear(noise_dim + 2, hidden), nn.ReLU(), nn.Linear(hidden, latent), nn.ReLU())
        self.extractor = nn.Sequential(nn.Linear(latent, rep), nn.ReLU())

    def forward(self, noise: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zf = self.framer(torch.cat([noise, y], dim=1))
        return zf, self.extractor(zf)


class Critic(nn.Module):
    """WGAN critic of (Z^F, Z^E) given y."""

    def __init__(self, latent: int, rep: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent + rep + 2, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, y], dim=1)).squeeze(1)


class MIEstimator(nn.Module):
    """Psi(Z_S, Z_G) -> a score whose JS bound estimates their mutual information."""

    def __init__(self, rep: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * rep, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, zs: torch.Tensor, zg: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([zs, zg], dim=1)).squeeze(1)


# ---------------------------------------------------------------- the constraints


def j_sim(zs: torch.Tensor, zg: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. 1: angular similarity with margin, on the batch-mean cosine of paired rows."""
    cos = F.cosine_similarity(zs, zg, dim=1, eps=1e-8).mean()
    angle = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
    return F.relu(1 - torch.cos(angle + margin))


def js_mi_loss(psi: MIEstimator, zs: torch.Tensor, zg: torch.Tensor) -> torch.Tensor:
    """-(JS MI estimate), Eq. 4/14: joint pairs (zs_k, zg_k) vs shuffled pairs (zs_{k+1}, zg_k)."""
    joint = psi(zs, zg)
    product = psi(torch.roll(zs, 1, dims=0), zg)
    return F.softplus(-joint).mean() + F.softplus(product).mean()


def fi_sigma(zf: torch.Tensor, ze: torch.Tensor, iters: int) -> torch.Tensor:
    """Eq. 8-10: sigma_1 of the transmitting matrix between a block's input and output batches.

    With the batch features as columns normalised over the batch (Z^ in R^{M x d}),
    G = Zf^T Ze (d_f x d_e) is about W^T when the input features are near-orthogonal, so
    sqrt(top eigenvalue of T = G^T G) = ||G||_2 estimates the block's Lipschitz constant.
    Power iteration runs without gradient (from the all-ones vector: for non-negative features
    G is non-negative and that is close to its Perron vector), then ||G v|| carries the gradient.
    Divided by sqrt(d_f d_e), its bound, so it lies in [0, 1] whatever the widths."""
    g = F.normalize(zf, dim=0, eps=1e-8).T @ F.normalize(ze, dim=0, eps=1e-8)
    with torch.no_grad():
        v = torch.ones(g.shape[1], device=g.device) / g.shape[1] ** 0.5
        for _ in range(iters):
            v = g.T @ (g @ v)
            v = v / v.norm().clamp_min(1e-12)
    return (g @ v).norm() / (g.shape[0] * g.shape[1]) ** 0.5


# ---------------------------------------------------------------- Expert Training (source side)


@dataclass
class TeacherData:
    zf: torch.Tensor
    ze: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


def teacher_data(model: FingerprintNet, rows: QueryBatch, xy_norm: np.ndarray) -> TeacherData:
    zf, ze = model.representations(rows)
    dev = model.device
    return TeacherData(
        torch.as_tensor(zf, device=dev),
        torch.as_tensor(ze, device=dev),
        torch.as_tensor(xy_norm, dtype=torch.float32, device=dev),
    )


def train_teacher(
    model: FingerprintNet, data: TeacherData, cfg: MstaConfig, seed: int, progress: ProgressFn = no_progress
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Expert Training of one source site; (arrays, config) of its teacher (G_i and R_i)."""
    s = model.shape
    dev = model.device
    with seeded(seed):
        gen_net = Generator(cfg.noise_dim, cfg.gen_hidden, s.latent, s.rep)
        critic = Critic(s.latent, s.rep, cfg.gen_hidden)
    gen_net, critic = gen_net.to(dev), critic.to(dev)
    reg = model.net.heads.xy
    reg.requires_grad_(False)
    rng = torch.Generator().manual_seed(seed)
    opt_g = torch.optim.Adam(gen_net.parameters(), lr=cfg.gan_lr, betas=(0.5, 0.9))
    opt_c = torch.optim.Adam(critic.parameters(), lr=cfg.gan_lr, betas=(0.5, 0.9))
    steps_per_epoch = max(len(data) // cfg.gan_batch, 1)
    epochs = max(1, -(-cfg.gan_steps // steps_per_epoch))
    step = _gan_step(gen_net, critic, reg, opt_c, data, cfg, rng)
    history = History()
    cbs: list[Callback] = [history, ProgressCallback(progress, epochs, 0.0, 1.0, "expert training (WGAN-GP)")]
    with seeded(seed, dev):
        run_epochs([gen_net, critic], step, _index_batches(len(data), cfg.gan_batch, rng, dev), opt_g, epochs, cbs)
    reg.requires_grad_(True)
    gen_net.eval()
    arrays = {**state_arrays(gen_net, "gen."), **state_arrays(reg, "reg.")}
    config = {
        "noise_dim": cfg.noise_dim,
        "gen_hidden": cfg.gen_hidden,
        "latent": s.latent,
        "rep": s.rep,
        "fi_source": _fi_of(data, cfg),
        "expert_training": {"epochs": epochs, "final": history.rows[-1] if history.rows else {}},
    }
    return arrays, config


def _index_batches(n: int, batch: int, rng: torch.Generator, dev: torch.device) -> Callable[[], Iterator[torch.Tensor]]:
    def epoch() -> Iterator[torch.Tensor]:
        perm = torch.randperm(n, generator=rng)
        for chunk in perm.split(batch):
            if len(chunk) >= 2:
                yield chunk.to(dev)

    return epoch


def _gan_step(
    gen_net: Generator,
    critic: Critic,
    reg: nn.Module,
    opt_c: torch.optim.Optimizer,
    data: TeacherData,
    cfg: MstaConfig,
    rng: torch.Generator,
) -> Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """n_critic critic updates (inside), then the generator loss for the loop's optimiser."""
    dev = data.y.device

    def noise(b: int) -> torch.Tensor:
        return torch.randn(b, cfg.noise_dim, generator=rng).to(dev)

    def step(idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        real = torch.cat([data.zf[idx], data.ze[idx]], dim=1)
        y = data.y[idx]
        b = len(idx)
        for _ in range(cfg.n_critic):
            with torch.no_grad():
                fake = torch.cat(gen_net(noise(b), y), dim=1)
            eps = torch.rand(b, 1, generator=rng).to(dev)
            mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
            grad = torch.autograd.grad(critic(mix, y).sum(), mix, create_graph=True)[0]
            gp = ((grad.norm(dim=1) - 1) ** 2).mean()
            w_dist = critic(real, y).mean() - critic(fake, y).mean()
            loss_c = -w_dist + cfg.gp_weight * gp
            opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            opt_c.step()
        zf_g, ze_g = gen_net(noise(b), y)
        adv = -critic(torch.cat([zf_g, ze_g], dim=1), y).mean()
        sim = j_sim(data.ze[idx], ze_g, cfg.margin_rad)
        mae = torch.sqrt(((reg(ze_g) - y) ** 2).sum(dim=1) + 1e-6).mean()
        loss = adv + cfg.sim_weight * sim + cfg.mae_weight * mae
        return loss, {"w_distance": w_dist.detach(), "j_sim": sim.detach(), "j_mae_generated": mae.detach()}

    return step


def _fi_of(data: TeacherData, cfg: MstaConfig) -> float:
    n = min(len(data), cfg.gan_batch)
    return float(fi_sigma(data.zf[:n], data.ze[:n], cfg.power_iters))


# ---------------------------------------------------------------- Expert Distilling (target side)


@dataclass
class Teacher:
    name: str
    gen: Generator
    noise_dim: int


def load_teachers(arrays: Mapping[str, np.ndarray], config: Mapping[str, Any], device: torch.device) -> list[Teacher]:
    """The teachers stored in one msta artifact (`site{i}.gen.*`)."""
    out = []
    for i, site in enumerate(config["sites"]):
        t = site["teacher"]
        g = Generator(int(t["noise_dim"]), int(t["gen_hidden"]), int(t["latent"]), int(t["rep"]))
        load_arrays(g, dict(arrays), f"site{i}.gen.")
        g.requires_grad_(False)
        out.append(Teacher(str(site["name"]), g.to(device).eval(), int(t["noise_dim"])))
    return out


def msta_recipe(prep: Prepared, teachers: Sequence[Teacher], cfg: MstaConfig) -> Recipe:
    if not teachers:
        raise InsufficientData("msta needs at least one surrogate teacher (source artifact)")
    for t in teachers:
        first = t.gen.extractor[0]
        assert isinstance(first, nn.Linear)
        if (first.in_features, first.out_features) != (prep.shape.latent, prep.shape.rep):
            raise InvalidParams(
                f"teacher {t.name!r} models latent/rep {first.in_features}/{first.out_features}; "
                f"the target network has {prep.shape.latent}/{prep.shape.rep}"
            )
    p = prep.p

    def recipe(
        data: TrainData, epochs: int, callbacks: Sequence[Callback], hook: Callable[[SpecialisedNet], None]
    ) -> SpecialisedNet:
        net = build_net(prep.shape, prep.seed, prep.device)
        hook(net)
        with seeded(prep.seed + 3):
            psi = MIEstimator(prep.shape.rep, cfg.mi_hidden)
        psi = psi.to(prep.device)
        if prep.shape.kind == "cnnloc":
            pretrain_sae(net, data, p.sae_epochs, p.batch_size, p.lr, prep.seed)
        gen = torch.Generator().manual_seed(prep.seed)
        noise_rng = torch.Generator().manual_seed(prep.seed + 1)
        opt = adam([{"params": trainable(net, psi)}], p.lr, p.weight_decay)
        step = distill_step(net, psi, teachers, cfg, p.task_weights(), noise_rng)
        run_epochs([net, psi], step, shuffled_batches(data, p.batch_size, gen), opt, epochs, callbacks)
        return net

    return recipe


def distill_step(
    net: SpecialisedNet,
    psi: MIEstimator,
    teachers: Sequence[Teacher],
    cfg: MstaConfig,
    w: TaskWeights,
    noise_rng: torch.Generator,
) -> Callable[[TrainData], tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    lam = [v / sum(cfg.lambdas) for v in cfg.lambdas]
    scale = 1.0 if cfg.teacher_reduce == "sum" else 1.0 / len(teachers)

    def step(batch: TrainData) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = net(batch.x)
        task, logs = task_loss(out, batch, w)
        fi_s = fi_sigma(out.zf, out.ze, cfg.power_iters)
        sim = mi = fi = torch.zeros((), device=batch.x.device)
        for t in teachers:
            z = torch.randn(len(batch), t.noise_dim, generator=noise_rng).to(batch.x.device)
            with torch.no_grad():
                zf_g, ze_g = t.gen(z, batch.xy)
                fi_g = fi_sigma(zf_g, ze_g, cfg.power_iters)
            sim = sim + j_sim(out.ze, ze_g, cfg.margin_rad)
            mi = mi + js_mi_loss(psi, out.ze, ze_g)
            fi = fi + (fi_g - fi_s).abs()
        sim, mi, fi = sim * scale, mi * scale, fi * scale
        loss = lam[0] * task + lam[1] * sim + lam[2] * mi + lam[3] * fi
        return loss, {**logs, "j_sim": sim.detach(), "j_mi": mi.detach(), "j_fi": fi.detach()}

    return step
