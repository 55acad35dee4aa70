"""Notebook 00's DM recipe (the cell tagged ``dm_recipe``, DM Eq. 2 written out) is the library loop:
``distill`` with ``dm_objective`` on the same draws gives the same images and losses."""
from pathlib import Path

import pytest
import torch

from ddkit.augment import DSA
from ddkit.core.utils import make_generator
from ddkit.methods.distill import distill, dm_objective, init_synthetic
from ddkit.methods.pools import RandomPool
from ddkit.runs.notebook_cells import run_tagged

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "00_quickstart.ipynb"
SEED, IPC, BATCH_REAL, ITERATIONS = 3, 2, 8, 2


def start(ds, device):
    return init_synthetic(ds, IPC, generator=make_generator(SEED), device=device)


def recipe(ds, device, aug_seed=SEED + 1):
    """The notebook's ``dm_update`` with the draws ``distill`` makes from ``SEED`` (DSA from ``aug_seed``)."""
    dm_update = run_tagged(NOTEBOOK, "dm_recipe")["dm_update"]
    x0, y0 = start(ds, device).detached()
    images = x0.clone().requires_grad_(True)
    opt = torch.optim.SGD([images], lr=1.0, momentum=0.5)
    net = RandomPool.for_dataset("ConvNet", ds, device=device).net
    draws = (make_generator(SEED + 2), make_generator(SEED), make_generator(aug_seed, device))
    losses = [dm_update(images, y0, net, opt, ds.to(device), BATCH_REAL, DSA(ds.dsa_strategy), *draws)
              for _ in range(ITERATIONS)]
    return images.detach(), losses


def library(ds, device):
    syn = start(ds, device)
    history = distill(syn, ds, dm_objective, RandomPool.for_dataset("ConvNet", ds, device=device), ITERATIONS,
                      lr_img=1.0, momentum=0.5, batch_real=BATCH_REAL, dsa=True, seed=SEED, device=device,
                      progress=False, compile=False, graphs=False)
    return syn.images.detach(), [h["loss"] for h in history]


def test_the_recipe_is_the_library_loop(tiny_ds, device):
    mine, my_losses = recipe(tiny_ds, device)
    lib, lib_losses = library(tiny_ds, device)
    # the same sums in another order (view/mean in the cell, mean_embedding_loss in the loop):
    # float32 rounding only, far below what one iteration moves (checked next)
    torch.testing.assert_close(mine, lib, rtol=1e-4, atol=1e-5)
    assert my_losses == pytest.approx(lib_losses, rel=1e-5)
    assert (lib - start(tiny_ds, device).images.detach()).abs().max() > 1e-2


def test_other_dsa_draws_give_other_images(tiny_ds, device):
    """The comparison has power: the recipe with another DSA generator ends elsewhere."""
    mine, _ = recipe(tiny_ds, device, aug_seed=SEED + 5)
    lib, _ = library(tiny_ds, device)
    assert (mine - lib).abs().max() > 1e-2
