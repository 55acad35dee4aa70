"""Checks of EAD's effect estimate, and its evidence summary (papers/05_ead.md).

:mod:`ddkit.methods.ead` holds the method (the replacement-effect objective of Eq. 7 and Algorithm 1); this module
holds what notebook 05 uses to judge it, one :class:`EADChecks` on a dataset:

- :meth:`EADChecks.retraining`: exact retraining vs. the first-order estimate :func:`replacement_effect_estimate`
  ((*) of :mod:`ddkit.methods.ead`'s docstring, or the paper's literal Eq. 4) on a convex problem
  (:func:`logistic_estimator_check` on real images), for small swaps and for EAD's ``G = D, A = S``
  (``replace_all=True``); the result is an :class:`EstimatorCheck`,
- :meth:`EADChecks.over_draws`: :func:`ddkit.methods.ead.effect_values` of a set over many draws of Algorithm 1,
- :meth:`EADChecks.evidence`: the evidence runs' accuracies per IPC, paired against :data:`INIT_LABEL`.

It imports :mod:`ddkit.methods.ead`; :mod:`ddkit.methods.ead` never imports it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..core.utils import make_generator
from ..losses import replacement_alpha
from .ead import effect_values

#: The evidence runs' label of EAD's init (random real images with the teacher's soft labels).
INIT_LABEL = "random real / teacher soft labels (EAD init)"


# =============================================================================== estimator check
def _softmax_reg_grad(theta: torch.Tensor, x1: torch.Tensor, y1h: torch.Tensor) -> torch.Tensor:
    """Gradient of the mean cross-entropy of multinomial logistic regression (x1 has a bias column)."""
    p = torch.softmax(x1 @ theta, dim=1)
    return x1.T @ (p - y1h) / len(x1)


def _softmax_reg_loss(theta, x1, y1h) -> float:
    return float(-(y1h * torch.log_softmax(x1 @ theta, dim=1)).sum(1).mean())


def _gd(x1, y1h, steps, lr, d, k, keep=False):
    theta = torch.zeros(d, k, dtype=x1.dtype)
    traj, losses = [], []
    for _ in range(steps):
        if keep:
            traj.append(theta.clone())
            losses.append(_softmax_reg_loss(theta, x1, y1h))
        theta = theta - lr * _softmax_reg_grad(theta, x1, y1h)
    return theta, traj, losses


def replacement_effect_estimate(probe_grads, data_grads, removed_grads, added_grads, n_data: int, n_removed: int,
                                n_added: int, weights=None, form: str = "derived") -> float:
    """Estimate ``R(G, A)`` from per-checkpoint flat gradients (lists over checkpoints).

    ``form="derived"``: (*) of :mod:`ddkit.methods.ead`'s docstring, the first-order effect of mean-normalised
    losses; ``form="paper"``: Eq. 4/5 literally, ``sum <g_P, g_G - alpha g_D> - sum <g_P, g_A>``.
    """
    alpha = replacement_alpha(n_data, n_removed, n_added)
    n_new = n_data - n_removed + n_added
    w = [1.0] * len(probe_grads) if weights is None else list(weights)
    total = 0.0
    for wt, gp, gd, gg, ga in zip(w, probe_grads, data_grads, removed_grads, added_grads):
        if form == "derived":
            v = alpha * gd - (n_removed / n_new) * gg + (n_added / n_new) * ga
        elif form == "paper":
            v = gg - alpha * gd - ga
        else:
            raise ValueError(f"form={form!r}; expected 'derived' or 'paper'")
        total += wt * float((gp.reshape(-1) * v.reshape(-1)).sum())
    return total


@dataclass
class EstimatorCheck:
    """Exact replacement effects (retraining) vs. the estimates, one entry per (G, A) pair."""

    exact: np.ndarray
    estimate: np.ndarray
    paper: np.ndarray
    n_removed: np.ndarray
    n_added: np.ndarray
    label_noise: np.ndarray
    corr: float
    corr_paper: float
    train_loss: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    @property
    def sign_agreement(self) -> float:
        """Fraction of pairs where the derived estimate has the sign of the exact effect."""
        return float(np.mean(np.sign(self.estimate) == np.sign(self.exact)))

    def __str__(self):
        return (f"estimator check: {len(self.exact)} (G, A) pairs, corr(derived R-hat, exact) = {self.corr:.3f}, "
                f"corr(paper Eq. 4 literal, exact) = {self.corr_paper:.3f}, sign agreement {self.sign_agreement:.2f}")


def logistic_estimator_check(x_train, y_train, x_probe, y_probe, x_pool, y_pool, num_classes: int, *,
                             num_pairs: int = 24, steps: int = 30, lr: float = 0.1, sizes=(5, 10, 20, 40),
                             label_noise=(0.0, 0.5, 1.0), t_m: int = 0, replace_all: bool = False,
                             seed: int = 0) -> EstimatorCheck:
    """Proposition 3.2 made visible on a convex problem (multinomial logistic regression).

    Train by full-batch gradient descent (``steps`` x ``lr``, from zero) on ``D = (x_train, y_train)``
    and keep the trajectory. For ``num_pairs`` random pairs (G, A) - G a random subset of D, A drawn
    from the pool with a fraction ``label_noise`` of its labels replaced at random, sizes from
    ``sizes`` - retrain on ``D - G + A`` with the same schedule and compute the exact effect
    ``L(P, theta_D) - L(P, theta_{D-G+A})``, and the estimates (derived form and the paper's literal
    Eq. 4) from the D-trajectory (all steps, or ``t_m`` sampled ones rescaled by ``T / t_m``).
    The first-order error grows with the distance travelled (``lr * steps``; Remark 3.4).

    ``replace_all=True`` is EAD's regime (Eq. 7): ``G = D`` (all of it) and ``A = S`` of a size from
    ``sizes``; the exact effect then retrains on ``A`` alone, and the derived estimate is
    ``sum_t eta <g_P, g_S - g_D>``.
    """
    g = make_generator(seed)
    x_train, x_probe, x_pool = (t.detach().reshape(len(t), -1).double().cpu() for t in (x_train, x_probe, x_pool))
    y_train, y_probe, y_pool = (t.detach().long().cpu() for t in (y_train, y_probe, y_pool))
    add_bias = lambda x: torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    x1, xp1, xa1 = add_bias(x_train), add_bias(x_probe), add_bias(x_pool)
    onehot = lambda y: F.one_hot(y, num_classes).double()
    y1h, yp1h = onehot(y_train), onehot(y_probe)
    d, k, n = x1.shape[1], num_classes, len(x1)
    if (not replace_all and max(sizes) >= n) or max(sizes) > len(xa1):
        raise ValueError(f"sizes {tuple(sizes)} too large for |D|={n}, |pool|={len(xa1)}")
    theta_d, traj, train_loss = _gd(x1, y1h, steps, lr, d, k, keep=True)
    idx_t = list(range(steps))
    scale = 1.0
    if t_m:
        if t_m > steps:
            raise ValueError(f"t_m={t_m} is larger than the trajectory ({steps} steps)")
        idx_t = torch.randperm(steps, generator=g)[:t_m].sort().values.tolist()
        scale = steps / t_m
    gP = [_softmax_reg_grad(traj[t], xp1, yp1h) for t in idx_t]
    gD = [_softmax_reg_grad(traj[t], x1, y1h) for t in idx_t]
    weights = [lr * scale] * len(idx_t)
    base = _softmax_reg_loss(theta_d, xp1, yp1h)
    rows = []
    for i in range(num_pairs):
        n_g = n if replace_all else int(sizes[torch.randint(len(sizes), (1,), generator=g).item()])
        n_a = int(sizes[torch.randint(len(sizes), (1,), generator=g).item()])
        noise = float(label_noise[i % len(label_noise)])
        G = torch.randperm(n, generator=g)[:n_g]
        keep = torch.ones(n, dtype=torch.bool)
        keep[G] = False
        A = torch.randperm(len(xa1), generator=g)[:n_a]
        ya = y_pool[A].clone()
        flip = torch.rand(n_a, generator=g) < noise
        ya[flip] = torch.randint(num_classes, (int(flip.sum()),), generator=g)
        xa, ya1h = xa1[A], onehot(ya)
        x_new, y_new = torch.cat([x1[keep], xa]), torch.cat([y1h[keep], ya1h])
        theta_new, _, _ = _gd(x_new, y_new, steps, lr, d, k)
        exact = base - _softmax_reg_loss(theta_new, xp1, yp1h)
        gG = [_softmax_reg_grad(traj[t], x1[G], y1h[G]) for t in idx_t]
        gA = [_softmax_reg_grad(traj[t], xa, ya1h) for t in idx_t]
        est = replacement_effect_estimate(gP, gD, gG, gA, n, n_g, n_a, weights, "derived")
        lit = replacement_effect_estimate(gP, gD, gG, gA, n, n_g, n_a, weights, "paper")
        rows.append((exact, est, lit, n_g, n_a, noise))
    arr = np.array(rows, dtype=float)
    corr = float(np.corrcoef(arr[:, 0], arr[:, 1])[0, 1])
    corr_paper = float(np.corrcoef(arr[:, 0], arr[:, 2])[0, 1])
    settings = dict(n_train=n, n_probe=len(xp1), n_pool=len(xa1), dim=d - 1, steps=steps, lr=lr, t_m=t_m,
                    sizes=list(sizes), label_noise=list(label_noise), replace_all=replace_all, seed=seed)
    return EstimatorCheck(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3].astype(int), arr[:, 4].astype(int), arr[:, 5],
                          corr, corr_paper, train_loss, settings)


# =============================================================================== the checks of notebook 05
class EADChecks:
    """The checks of notebook 05 on one dataset's training images (see the module docstring).

        checks = EADChecks(ds)
        chk = checks.retraining(num_pairs=24, steps=30, lr=0.01)        # Prop. 3.2: estimate vs. retraining
        draws = checks.over_draws(net, traj, x, y, draws=4, t_m=2, batch_probe=64, batch_real=64)
        summary = EADChecks.evidence(records)                            # the evidence runs, per IPC
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def retraining(self, *, n_train: int = 300, n_probe: int = 200, n_pool: int = 500, downsample: int = 2,
                   seed: int = 0, **kw) -> EstimatorCheck:
        """:func:`logistic_estimator_check` (``kw``: its settings) on disjoint random subsets of the dataset's
        training images, average-pooled by ``downsample`` and flattened (a few hundred real samples)."""
        ds = self.dataset
        n = len(ds.x_train)
        if n_train + n_probe + n_pool > n:
            raise ValueError(f"n_train + n_probe + n_pool = {n_train + n_probe + n_pool} exceeds {n} training images")
        g = make_generator(seed)
        perm = torch.randperm(n, generator=g)
        x = ds.x_train.detach().cpu()
        if downsample > 1:
            x = F.avg_pool2d(x, downsample)
        y = ds.y_train.cpu()
        a, b = perm[:n_train], perm[n_train:n_train + n_probe]
        c = perm[n_train + n_probe:n_train + n_probe + n_pool]
        return logistic_estimator_check(x[a], y[a], x[b], y[b], x[c], y[c], ds.num_classes, seed=seed, **kw)

    def over_draws(self, model, trajectory, x_syn, y_syn, *, draws: int, t_m: int, batch_probe: int,
                   batch_real: int, real_coef: float = 1.0, eta_weighting: bool = False, seed: int = 0) -> list:
        """:func:`ddkit.methods.ead.effect_values` of a fixed set ``(x_syn, y_syn)`` (hard or soft labels) for
        ``draws`` random draws of a probe batch, a disjoint real batch and ``t_m`` checkpoints, as in one update
        of Algorithm 1. The signed values' mean against their spread says whether Eq. 7 is met in expectation."""
        if int(draws) != draws or draws < 1:
            raise ValueError(f"draws={draws!r} must be a positive integer")
        ds = self.dataset
        n = len(ds.x_train)
        if batch_probe + batch_real > n:
            raise ValueError(f"batch_probe + batch_real = {batch_probe + batch_real} exceeds the {n} training images")
        gen = make_generator(seed)
        out = []
        for _ in range(int(draws)):
            idx = torch.randperm(n, generator=gen)[:batch_probe + batch_real].to(ds.x_train.device)
            p, d = idx[:batch_probe], idx[batch_probe:]
            cks = trajectory.sample(t_m, gen)
            out.append(effect_values(model, cks, ds.x_train[p], ds.y_train[p], ds.x_train[d], ds.y_train[d],
                                     x_syn, y_syn, real_coef=real_coef, eta_weighting=eta_weighting))
        return out

    @staticmethod
    def evidence(records: list) -> dict:
        """Per IPC, from evidence runs' ``result.json`` records (one per seed, each with an ``evaluations`` list):
        ``methods`` - ``label -> {mean, std, n_nets}`` over all networks of all seeds (label ``"method / variant"``);
        ``paired`` - for every EAD form, :func:`ddkit.core.stats.paired_difference` of the per-seed mean accuracies
        against the init's (:data:`INIT_LABEL`, same seed); ``seeds``; ``dataset``."""
        from ..core.stats import paired_difference

        by_ipc: dict = {}
        for r in records:
            seed = r["params"]["seed"]
            for e in r.get("evaluations", []):
                label = f"{e['method']} / {e['variant']}" if e.get("variant") else e["method"]
                slot = by_ipc.setdefault(int(e["ipc"]), {"dataset": r["dataset"], "accs": {}})
                slot["accs"].setdefault(label, {})[seed] = list(e["accs"])
        out = {}
        for ipc, slot in by_ipc.items():
            accs = slot["accs"]
            methods = {k: {"mean": float(np.mean(sum(v.values(), []))), "std": float(np.std(sum(v.values(), []))),
                           "n_nets": len(sum(v.values(), []))} for k, v in accs.items()}
            init = accs.get(INIT_LABEL, {})
            paired = {}
            for label, per_seed in accs.items():
                seeds = sorted(set(per_seed) & set(init))
                if label.startswith("EAD") and seeds:
                    paired[label] = paired_difference([np.mean(per_seed[k]) for k in seeds],
                                                      [np.mean(init[k]) for k in seeds])
            out[ipc] = {"dataset": slot["dataset"], "seeds": sorted(set().union(*(set(v) for v in accs.values()))),
                        "methods": methods, "paired": paired}
        return out
