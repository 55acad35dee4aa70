"""Coreset baselines: class-balanced real-image selections (random, herding, k-center, forgetting).

Each returns training indices, ``ipc`` per class, class-major. Herding and k-center work on
embeddings of a briefly trained ConvNet; forgetting counts forgetting events (Toneva et al. 2019)
while training on the real data.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.checks import check_ipc
from ..core.utils import make_generator, resolve_device
from ..models import get_model
from ..train import embed_all, sgd, train_classifier

METHODS = ("random", "herding", "kcenter", "forgetting")


def _embedding_model(dataset, model, epochs, seed, device):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = get_model(model, dataset.channels, dataset.num_classes, dataset.im_size).to(device)
    train_classifier(net, dataset.x_train, dataset.y_train, epochs=epochs, generator=make_generator(seed, device),
                     progress=True, desc=f"coreset {model}")
    return net.eval()


def herding(features: torch.Tensor, n: int) -> torch.Tensor:
    """Welling's herding: greedily pick the sample that keeps the running mean of the selection
    closest to the class mean. Returns positions into ``features``."""
    mu = features.mean(0)
    chosen, total = [], torch.zeros_like(mu)
    available = torch.ones(len(features), dtype=torch.bool, device=features.device)
    for k in range(min(n, len(features))):
        dist = ((mu - (total + features) / (k + 1)) ** 2).sum(1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        total += features[i]
    return torch.tensor(chosen, dtype=torch.long)


def k_center(features: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy k-center (Sener & Savarese 2018): start at the sample nearest the class mean, then
    repeatedly add the sample farthest from the chosen set."""
    first = int(((features - features.mean(0)) ** 2).sum(1).argmin())
    chosen = [first]
    dmin = ((features - features[first]) ** 2).sum(1)
    for _ in range(min(n, len(features)) - 1):
        i = int(dmin.argmax())
        chosen.append(i)
        dmin = torch.minimum(dmin, ((features - features[i]) ** 2).sum(1))
    return torch.tensor(chosen, dtype=torch.long)


def forgetting_counts(dataset, model: str = "ConvNet", epochs: int = 10, batch_size: int = 256, seed: int = 0,
                      device=None) -> torch.Tensor:
    """Forgetting events per training sample (Toneva et al. 2019): a sample is forgotten when it was
    classified correctly at its previous presentation and incorrectly now. Samples never learned
    count as forgotten ``epochs`` times (the paper treats them as most forgettable)."""
    dev = resolve_device(device)
    data = dataset.to(dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = get_model(model, data.channels, data.num_classes, data.im_size).to(dev)
    opt, gen = sgd(net, 0.01), make_generator(seed, dev)
    n = len(data.x_train)
    prev = torch.zeros(n, dtype=torch.bool, device=dev)
    ever = torch.zeros(n, dtype=torch.bool, device=dev)
    counts = torch.zeros(n, dtype=torch.long, device=dev)
    net.train()
    for _ in tqdm(range(epochs), desc="forgetting", leave=False):
        perm = torch.randperm(n, generator=gen, device=dev)
        for b in range(0, n, batch_size):
            idx = perm[b:b + batch_size]
            logits = net(data.x_train[idx])
            correct = logits.argmax(1) == data.y_train[idx]
            counts[idx] += (prev[idx] & ~correct).long()
            prev[idx], ever[idx] = correct, ever[idx] | correct
            loss = F.cross_entropy(logits, data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    counts[~ever] = epochs
    return counts.cpu()


def select(method: str, dataset, ipc: int, seed: int = 0, model: str = "ConvNet", train_epochs: int = 5,
           device=None) -> torch.Tensor:
    """Indices of ``ipc`` training images per class chosen by ``method`` (see ``METHODS``)."""
    if method not in METHODS:
        raise ValueError(f"unknown coreset method {method!r}; expected one of {METHODS}")
    check_ipc(ipc, dataset)
    dev = resolve_device(device)
    g = make_generator(seed, "cpu")
    classes = range(dataset.num_classes)
    if method == "random":
        return torch.cat([dataset.sample_indices(c, ipc, g).cpu() for c in classes])
    if method == "forgetting":
        counts = forgetting_counts(dataset, model, train_epochs, seed=seed, device=dev)
        picks = []
        for c in classes:
            idx = dataset.class_indices(c).cpu()
            order = torch.argsort(counts[idx], descending=True, stable=True)
            picks.append(idx[order[:ipc]])
        return torch.cat(picks)
    data = dataset.to(dev)
    net = _embedding_model(data, model, train_epochs, seed, dev)
    pick = herding if method == "herding" else k_center
    out = []
    for c in classes:
        idx = data.class_indices(c)
        out.append(idx[pick(embed_all(net, data.x_train[idx]), ipc).to(idx.device)].cpu())
    return torch.cat(out)
