"""Reference-style loops: the *structure* of the public DC/DSA/DM reference code, written for
ddkit's benchmarks (never copied), on ddkit's modules (``ddkit.models``, ``ddkit.augment``) so a
ratio isolates the loop structure, not the layers.

DM iteration (``main_DM.py`` structure): a new network object every iteration; per class, a
real batch, DSA on the real and on the synthetic images of that class with one shared draw
(the reference replays a seed), two separate forward passes (real embedding detached), the
per-class squared distance of the mean embeddings summed; one SGD step on the images.

Evaluation (``evaluate_synset`` / ``epoch`` structure): a fresh network, a ``DataLoader`` over a
``TensorDataset`` of the synthetic set (batch 256, shuffled), DSA per batch, per-batch loss and
accuracy read back to the host, the step decay with a re-created optimizer at ``epochs // 2 + 1``;
the test pass through a ``DataLoader`` (batch 256) in eval mode, with autograd on (the reference
``epoch('test', ...)`` runs without ``no_grad``).

Randomness is wired to ddkit's generators (same data indices, same DSA draws, same initial
weights) so the two paths compute the same losses.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from ddkit.augment import DSA
from ddkit.core.utils import make_generator
from ddkit.models import get_model


def new_network(model: str, dataset, seed: int) -> nn.Module:
    """A new network object whose weights equal ``reinit_`` under ``seed`` (construction-time
    init under a seeded global RNG, as the reference does)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_model(model, dataset.channels, dataset.num_classes, dataset.im_size)


def _image_loop_setup(images, labels, dataset, seed, lr_img, momentum, dsa):
    """What every reference-style image loop starts with: classes, IPC, the DSA module, the
    three generators (data, augmentation, network seeds), the learnable images and their SGD."""
    k = dataset.num_classes
    aug = DSA(dataset.dsa_strategy) if dsa is True else dsa
    gens = make_generator(seed), make_generator(seed + 1), make_generator(seed + 2)
    image_syn = images.detach().clone().requires_grad_(True)
    return k, len(labels) // k, aug, gens, image_syn, torch.optim.SGD([image_syn], lr=lr_img, momentum=momentum)


def dm_reference(images: torch.Tensor, labels: torch.Tensor, dataset, iterations: int, *, seed: int = 0,
                 model: str = "ConvNet", lr_img: float = 1.0, momentum: float = 0.5, batch_real: int = 256,
                 dsa=True) -> tuple[torch.Tensor, list]:
    """``iterations`` DM iterations, reference-style. Returns (images, per-iteration losses)."""
    k, ipc, aug, (g_data, g_aug, g_pool), image_syn, opt = _image_loop_setup(images, labels, dataset, seed,
                                                                              lr_img, momentum, dsa)
    losses = []
    for _ in range(iterations):
        net_seed = int(torch.randint(0, 2**62, (1,), generator=g_pool))
        net = new_network(model, dataset, net_seed)
        net.train()
        for p in net.parameters():
            p.requires_grad = False
        embed = net.embed
        params = aug.sample(k, generator=g_aug) if aug is not None else None
        loss = torch.tensor(0.0)
        for c in range(k):
            img_real = dataset.x_train[dataset.sample_indices(c, batch_real, g_data)]
            img_syn = image_syn[c * ipc:(c + 1) * ipc]
            if aug is not None:
                row = params.index([c])
                img_real = aug.apply(img_real, row, torch.zeros(len(img_real), dtype=torch.long))
                img_syn = aug.apply(img_syn, row, torch.zeros(len(img_syn), dtype=torch.long))
            output_real = embed(img_real).detach()
            output_syn = embed(img_syn)
            loss = loss + torch.sum((output_real.mean(0) - output_syn.mean(0)) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return image_syn.detach(), losses


def evaluate_reference(x_syn: torch.Tensor, y_syn: torch.Tensor, dataset, *, epochs: int, seed: int = 0,
                       model: str = "ConvNet", lr: float = 0.01, batch_size: int = 256, dsa=True) -> float:
    """Train one fresh network on the synthetic set and test it, reference-style. The initial
    weights equal ddkit's network 0 of ``evaluate_synset(seed=seed)``. Returns the test accuracy (%)."""
    torch.manual_seed(seed * 1000)
    net = get_model(model, dataset.channels, dataset.num_classes, dataset.im_size)
    aug = DSA(dataset.dsa_strategy) if dsa is True else dsa
    gen = make_generator(seed * 1000)
    criterion = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    train_loader = DataLoader(TensorDataset(x_syn.detach().clone(), y_syn.detach().clone()), batch_size=batch_size,
                              shuffle=True, num_workers=0)
    decay = epochs // 2 + 1
    for ep in range(epochs):
        if ep == decay:
            lr *= 0.1
            opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
        net.train()
        loss_avg, acc_avg, num = 0.0, 0, 0
        for img, lab in train_loader:
            if aug is not None:
                img = aug(img, generator=gen)
            output = net(img)
            loss = criterion(output, lab)
            loss_avg += loss.item() * len(lab)
            acc_avg += int((output.argmax(1) == lab).sum().item())
            num += len(lab)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    test_loader = DataLoader(TensorDataset(dataset.x_test, dataset.y_test), batch_size=256, shuffle=False,
                             num_workers=0)
    correct, total = 0, 0
    for img, lab in test_loader:
        output = net(img)
        loss = criterion(output, lab)
        correct += int((output.argmax(1) == lab).sum().item())
        total += len(lab)
    return 100.0 * correct / total


def dm_family_reference(images: torch.Tensor, labels: torch.Tensor, dataset, iterations: int, class_terms, *,
                        seed: int = 0, model: str = "ConvNet", factor: int = 1, lr_img: float = 1.0,
                        momentum: float = 0.5, batch_real: int = 256, dsa=True, clamp=None, after_step=None,
                        extra_net=None) -> tuple[torch.Tensor, list]:
    """The DM loop structure generalised to the DM-family objectives (IID, DSDM): a new network
    object every iteration (and a new ``extra_net`` object, e.g. IID's pretrained ResNet, from
    ``extra_net(generator)``), per class: real batch, the class's decoded synthetic images, one
    shared DSA draw, two forward passes, ``class_terms(net, extra, f_real, m_real, f_syn, m_syn, c)``
    summed over classes; one SGD step; optional clamp and ``after_step(net, images)``."""
    from ddkit.augment import decode

    k, ipc, aug, (g_data, g_aug, g_pool), image_syn, opt = _image_loop_setup(images, labels, dataset, seed,
                                                                              lr_img, momentum, dsa)
    losses = []
    for it in range(iterations):
        net = new_network(model, dataset, int(torch.randint(0, 2**62, (1,), generator=g_pool)))
        net.train()
        for p in net.parameters():
            p.requires_grad = False
        params = aug.sample(k, generator=g_aug)
        extra = extra_net() if extra_net is not None else None
        real_idx = [dataset.sample_indices(c, batch_real, g_data) for c in range(k)]
        loss = torch.tensor(0.0)
        for c in range(k):
            img_real = dataset.x_train[real_idx[c]]
            lab = labels[c * ipc:(c + 1) * ipc]
            img_syn, _ = decode(image_syn[c * ipc:(c + 1) * ipc], lab, factor)
            row = params.index([c])
            img_real = aug.apply(img_real, row, torch.zeros(len(img_real), dtype=torch.long))
            img_syn = aug.apply(img_syn, row, torch.zeros(len(img_syn), dtype=torch.long))
            m_real = net.feature_maps(img_real)[-1].detach()
            m_syn = net.feature_maps(img_syn)[-1]
            f_real, f_syn = net.embed_from_last(m_real), net.embed_from_last(m_syn)
            loss = loss + class_terms(net, extra, f_real, m_real, f_syn, m_syn, img_syn, it)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if clamp is not None:
            with torch.no_grad():
                image_syn.data = torch.maximum(torch.minimum(image_syn.data, clamp[1]), clamp[0])
        if after_step is not None:
            after_step(net, image_syn.detach(), labels, factor)
        losses.append(loss.item())
    return image_syn.detach(), losses
