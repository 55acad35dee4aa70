"""Bad input is rejected before compute, with the error type and a message naming the bad value.

One case per kind of bad input: ``(kind, call, error type, pattern)``; ``call(ctx)``
gets a dict with a small dataset (``ds``), a temporary folder (``tmp``) and ready-made files. The
pattern must match the message (it names the value, and the parameter where there is one). A
monkeypatched ``train_classifier`` / ``Tensor.backward`` fails the case when compute starts first.
"""
from __future__ import annotations

import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from ddkit import evaluate as evalmod
from ddkit.augment import DSA
from ddkit.data import ImageDataset, load_dataset
from ddkit.evaluate import evaluate_synset
from ddkit.fast.ensemble import train_together
from ddkit.methods.coreset import select
from ddkit.methods.distill import dm_objective, distill, init_synthetic
from ddkit.methods.dm import Comparison, make_pool
from ddkit.methods.ead import EADSynSet, check_objective, check_soft_labels
from ddkit.methods.gan_checkpoint import build_gan, load_checkpoint
from ddkit.losses import (PrototypeBank, class_centralization_loss, class_prototypes, effect_alignment_loss,
                          effect_alignment_squared_loss, effect_alignment_vector_loss, historical_prototype_loss,
                          local_covariance_loss, mean_embedding_loss, replacement_alpha, semantic_diversity_loss,
                          skd_loss, standardize_logits)
from ddkit.batch.sweep import expand
from ddkit.core.utils import atomic_torch_save, make_generator, resolve_device, safe_torch_load
from ddkit.methods.pools import PretrainedPool, RandomPool
from ddkit.methods.trajectory import Trajectory
from ddkit.models import get_model
from ddkit.runs.params import check_params
from ddkit.runs.results import load_synset, read_result, save_synset
from ddkit.train import train_classifier

SMALL = {"width": 8}


@pytest.fixture(scope="module")
def ctx(mnist5k, tmp_path_factory):
    idx = torch.cat([mnist5k.class_indices(c)[:6] for c in range(mnist5k.num_classes)])
    ds = ImageDataset(mnist5k.name, mnist5k.x_train[idx], mnist5k.y_train[idx], mnist5k.x_test[:50],
                      mnist5k.y_test[:50], mnist5k.mean, mnist5k.std, mnist5k.classes, mnist5k.dsa_strategy)
    tmp = tmp_path_factory.mktemp("bad")
    x, y = ds.x_train[:10], ds.y_train[:10]
    pool = PretrainedPool("ConvNet", ds, num_models=1, epochs=1, train_per_class=2, cache_dir=tmp / "pools",
                          progress=False, test_samples=0, **SMALL)
    traj = Trajectory.train(ds, "ConvNet", epochs=1, batch_size=30, lr=0.05, model_kw=SMALL, progress=False)
    traj.save(tmp / "traj.pt")
    save_synset(tmp, x, y, dataset=ds.name, ipc=1)
    (tmp / "truncated.pt").write_bytes((tmp / "synset.pt").read_bytes()[:200])
    (tmp / "text.pt").write_text("not a checkpoint at all\n")
    torch.save({"weights": torch.zeros(3)}, tmp / "foreign.pt")
    torch.save(torch.nn.Linear(2, 2), tmp / "pickled_module.pt")  # needs code to load: weights_only refuses
    gan = build_gan(ds, z_dim=8, gen_width=8, disc_width=8)
    (tmp / "result.json").write_text('{"method": "DM", "acc')
    (tmp / "list.json").write_text("[1, 2, 3]")
    np.savez(tmp / "nolabels.npz", x_train=np.zeros((4, 8, 8), np.uint8))
    np.savez(tmp / "badlabels.npz", x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array([0, 1, 2, 7]),
             x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.array([0, 1]))
    np.savez(tmp / "floatlabels.npz", x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array([0, 1, 0, 1.5]),
             x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.array([0, 1]))
    np.savez(tmp / "badshape.npz", x_train=np.zeros((4, 64), np.uint8), y_train=np.array([0, 1, 0, 1]),
             x_test=np.zeros((2, 64), np.uint8), y_test=np.array([0, 1]))
    np.savez(tmp / "ok.npz", x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array([0, 1, 0, 1]),
             x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.array([0, 1]))
    (tmp / "truncated.npz").write_bytes((tmp / "ok.npz").read_bytes()[:100])
    nan_images = np.zeros((4, 8, 8), np.float32)
    nan_images[1, 2, 3], nan_images[3, 0, 0], nan_images[3, 0, 1] = np.nan, np.inf, -np.inf
    np.savez(tmp / "nan.npz", x_train=np.zeros((4, 8, 8), np.float32), y_train=np.array([0, 1, 0, 1]),
             x_test=nan_images, y_test=np.array([0, 1, 0, 1]))
    with zipfile.ZipFile(tmp / "notnpz.npz", "w") as z:
        z.writestr("readme.txt", "a zip, not arrays")
    return dict(ds=ds, tmp=tmp, x=x, y=y, pool=pool, traj=traj, gan=gan)


def ev(c, x=None, y=None, **kw):
    """evaluate_synset on the context's tiny set with tiny settings, overridden by ``kw``."""
    args = dict(model="ConvNet", num_models=1, epochs=1, batch_size=8, progress=False, model_kw=SMALL)
    return evaluate_synset(c["x"] if x is None else x, c["y"] if y is None else y, c["ds"], **{**args, **kw})


def soft(c, k=10, scale=1.0):
    return torch.full((len(c["x"]), k), scale / k)


def grid(c, text):
    path = c["tmp"] / "grid.yaml"
    path.write_text(text)
    return expand([path], results_dir=c["tmp"] / "results")


GRID = "notebook: 00_quickstart.ipynb\nname: g{ipc}\n"

CASES = [
    # --- models: counts, types, names
    ("model with 0 classes", lambda c: get_model("ConvNet", 1, 0, 28), ValueError, r"num_classes=0"),
    ("model with negative classes", lambda c: get_model("ConvNet", 1, -3, 28), ValueError, r"num_classes=-3"),
    ("model with 0 channels", lambda c: get_model("ConvNet", 0, 10, 28), ValueError, r"channels=0"),
    ("string for an int (channels)", lambda c: get_model("ConvNet", "1", 10, 28), TypeError, r"channels='1'"),
    ("float for a count (classes)", lambda c: get_model("ConvNet", 1, 10.0, 28), TypeError, r"num_classes=10\.0"),
    ("bool for a count (classes)", lambda c: get_model("ConvNet", 1, True, 28), TypeError, r"num_classes=True"),
    ("image size 0", lambda c: get_model("ConvNet", 1, 10, (0, 28)), ValueError, r"im_size=0"),
    ("unknown model name", lambda c: get_model("ResNet99", 1, 10, 28), ValueError, r"'ResNet99'.*ConvNet"),
    # --- evaluate_synset: labels
    ("label >= K", lambda c: ev(c, y=torch.tensor([10] + [0] * 9)), ValueError, r"y_syn.*label 10.*0\.\.9"),
    ("negative label", lambda c: ev(c, y=torch.tensor([-1] + [0] * 9)), ValueError, r"y_syn.*label -1"),
    ("hard labels of float dtype", lambda c: ev(c, y=c["y"].float()), TypeError, r"y_syn.*torch\.float32"),
    ("hard labels of bool dtype", lambda c: ev(c, y=c["y"] > 4), TypeError, r"y_syn.*torch\.bool"),
    ("soft label rows not summing to 1", lambda c: ev(c, y=soft(c, scale=0.5)), ValueError,
     r"y_syn.*sum to 1.*0\.5"),
    ("soft labels with the wrong class count", lambda c: ev(c, y=soft(c, k=7)), ValueError, r"y_syn.*7 classes"),
    ("NaN in soft labels", lambda c: ev(c, y=soft(c).index_put_((torch.tensor([0]),), torch.tensor(float("nan")))),
     ValueError, r"y_syn.*NaN"),
    ("labels of the wrong rank", lambda c: ev(c, y=c["y"].view(10, 1, 1)), ValueError, r"y_syn.*\(10, 1, 1\)"),
    ("mismatched lengths", lambda c: ev(c, y=c["y"][:7]), ValueError, r"x_syn has 10 images but y_syn has 7 labels"),
    # --- evaluate_synset: images
    ("images with the wrong channels", lambda c: ev(c, x=c["x"].repeat(1, 3, 1, 1)), ValueError,
     r"x_syn.*\(3, 28, 28\).*\(1, 28, 28\)"),
    ("images of the wrong size", lambda c: ev(c, x=torch.zeros(10, 1, 32, 32)), ValueError,
     r"x_syn.*\(1, 32, 32\).*\(1, 28, 28\)"),
    ("images without a channel axis", lambda c: ev(c, x=c["x"][:, 0]), ValueError, r"x_syn.*\(10, 28, 28\)"),
    ("NaN in images", lambda c: ev(c, x=c["x"].clone().index_fill_(0, torch.tensor([3]), float("nan"))),
     ValueError, r"x_syn contains NaN"),
    ("Inf in images", lambda c: ev(c, x=c["x"].clone().index_fill_(0, torch.tensor([0]), float("inf"))),
     ValueError, r"x_syn contains NaN or Inf"),
    ("empty tensors", lambda c: ev(c, x=c["x"][:0], y=c["y"][:0]), ValueError, r"x_syn is empty"),
    ("integer images", lambda c: ev(c, x=c["x"].to(torch.uint8)), TypeError, r"x_syn.*torch\.uint8"),
    ("a numpy array for images", lambda c: ev(c, x=c["x"].numpy()), TypeError, r"x_syn.*ndarray"),
    ("tensors on another device (meta: no data)", lambda c: ev(c, x=c["x"].to("meta")), ValueError,
     r"x_syn.*device meta"),
    ("None for images", lambda c: evaluate_synset(None, c["y"], c["ds"], progress=False), TypeError,
     r"x_syn.*NoneType"),
    # --- evaluate_synset: counts and names
    ("num_models=0", lambda c: ev(c, num_models=0), ValueError, r"num_models=0"),
    ("None for a count (num_models)", lambda c: ev(c, num_models=None), TypeError, r"num_models=None"),
    ("epochs=0", lambda c: ev(c, epochs=0), ValueError, r"epochs=0"),
    ("float batch size", lambda c: ev(c, batch_size=2.5), TypeError, r"batch_size=2\.5"),
    ("zero learning rate", lambda c: ev(c, lr=0), ValueError, r"lr=0"),
    ("string learning rate", lambda c: ev(c, lr="0.01"), TypeError, r"lr='0\.01'"),
    ("unknown schedule", lambda c: ev(c, schedule="cosine"), ValueError, r"schedule='cosine'"),
    ("unknown protocol", lambda c: Comparison(c["ds"], "fancy", num_models=1, epochs=1, seed=0),
     ValueError, r"protocol='fancy'"),
    ("unknown DSA strategy", lambda c: DSA("color_blur"), ValueError, r"blur"),
    ("unknown EAD objective", lambda c: check_objective("cubic"), ValueError, r"objective='cubic'"),
    # --- devices
    ("unknown device string", lambda c: resolve_device("gpu0"), ValueError, r"device='gpu0'"),
    ("device cuda:7 on a machine without it", lambda c: resolve_device("cuda:7"), ValueError, r"device='cuda:7'"),
    # --- synthetic-set construction, coresets, pools
    ("IPC 0", lambda c: init_synthetic(c["ds"], 0), ValueError, r"ipc=0"),
    ("float IPC", lambda c: init_synthetic(c["ds"], 1.5), TypeError, r"ipc=1\.5"),
    ("IPC larger than a class has", lambda c: init_synthetic(c["ds"], 7), ValueError,
     r"ipc=7 is too large.*only 6 training images.*ipc <= 6"),
    ("IPC x factor^2 larger than a class has", lambda c: init_synthetic(c["ds"], 2, factor=2), ValueError,
     r"ipc=2 is too large.*ipc x factor\^2 = 2 x 4"),
    ("unknown init", lambda c: init_synthetic(c["ds"], 1, init="zeros"), ValueError, r"init='zeros'"),
    ("coreset IPC larger than a class has", lambda c: select("random", c["ds"], 9), ValueError, r"ipc=9"),
    ("unknown coreset strategy", lambda c: select("entropy", c["ds"], 1), ValueError, r"'entropy'"),
    ("unknown pool kind", lambda c: make_pool("zoo", c["ds"]), ValueError, r"pool kind 'zoo'"),
    ("pool of 0 networks", lambda c: PretrainedPool("ConvNet", c["ds"], num_models=0, cache_dir=c["tmp"]),
     ValueError, r"num_models.*0"),
    ("negative iterations", lambda c: distill(init_synthetic(c["ds"], 1), c["ds"], dm_objective,
                                              RandomPool.for_dataset("ConvNet", c["ds"], **SMALL), -1,
                                              progress=False), ValueError, r"iterations=-1"),
    ("zero real batch", lambda c: distill(init_synthetic(c["ds"], 1), c["ds"], dm_objective,
                                          RandomPool.for_dataset("ConvNet", c["ds"], **SMALL), 1, batch_real=0,
                                          progress=False), ValueError, r"batch_real=0"),
    ("negative image learning rate", lambda c: distill(init_synthetic(c["ds"], 1), c["ds"], dm_objective,
                                                       RandomPool.for_dataset("ConvNet", c["ds"], **SMALL), 1,
                                                       lr_img=-1.0, progress=False), ValueError, r"lr_img=-1\.0"),
    ("NaN image learning rate", lambda c: distill(init_synthetic(c["ds"], 1), c["ds"], dm_objective,
                                                  RandomPool.for_dataset("ConvNet", c["ds"], **SMALL), 1,
                                                  lr_img=float("nan"), progress=False), ValueError, r"lr_img=nan"),
    ("image momentum above 1", lambda c: distill(init_synthetic(c["ds"], 1), c["ds"], dm_objective,
                                                 RandomPool.for_dataset("ConvNet", c["ds"], **SMALL), 1,
                                                 momentum=1.5, progress=False), ValueError,
     r"momentum=1\.5.*\[0, 1\]"),
    ("EAD soft labels not summing to 1", lambda c: check_soft_labels(torch.full((2, 10), 0.2), 10), ValueError,
     r"sum to 1"),
    ("EAD set with another class count", lambda c: EADSynSet(c["x"], torch.zeros(10, 10), c["y"], num_classes=4),
     ValueError, r"10 classes.*4"),
    # --- datasets and .npz files
    ("unknown dataset", lambda c: load_dataset("imagenet-1k"), ValueError, r"'imagenet-1k'"),
    ("missing .npz", lambda c: load_dataset(str(c["tmp"] / "absent.npz")), FileNotFoundError, r"absent\.npz"),
    (".npz without labels", lambda c: load_dataset(str(c["tmp"] / "nolabels.npz")), ValueError, r"y_train"),
    (".npz with labels outside 0..K-1", lambda c: load_dataset(str(c["tmp"] / "badlabels.npz")), ValueError,
     r"badlabels\.npz.*0\.\.K-1"),
    (".npz with float labels", lambda c: load_dataset(str(c["tmp"] / "floatlabels.npz")), ValueError,
     r"floatlabels\.npz.*float64"),
    (".npz with flat images", lambda c: load_dataset(str(c["tmp"] / "badshape.npz")), ValueError,
     r"badshape\.npz.*\(4, 64\)"),
    ("truncated .npz", lambda c: load_dataset(str(c["tmp"] / "truncated.npz")), ValueError, r"truncated\.npz"),
    ("a zip that is not a .npz of arrays", lambda c: load_dataset(str(c["tmp"] / "notnpz.npz")), ValueError,
     r"notnpz\.npz.*x_train"),
    (".npz with NaN/inf pixels", lambda c: load_dataset(str(c["tmp"] / "nan.npz")), ValueError,
     r"nan\.npz: x_test contains 3 NaN/inf pixel values in 2 images \(first at image indices \[1, 3\]\)"),
    # --- ddkit files: synthetic sets, checkpoints, pools, trajectories, GAN generators, results
    ("truncated synthetic set", lambda c: load_synset(c["tmp"] / "truncated.pt"), ValueError,
     r"truncated\.pt is not a readable ddkit checkpoint"),
    ("synthetic set of another dataset", lambda c: load_synset(c["tmp"] / "synset.pt", {"dataset": "cifar10"}),
     ValueError, r"dataset='mnist5k'.*dataset='cifar10'"),
    ("text file as a checkpoint", lambda c: safe_torch_load(c["tmp"] / "text.pt"), ValueError, r"text\.pt"),
    ("foreign torch file (no meta)", lambda c: safe_torch_load(c["tmp"] / "foreign.pt"), ValueError,
     r"foreign\.pt is not a ddkit checkpoint"),
    ("pickled code (weights_only refuses)", lambda c: safe_torch_load(c["tmp"] / "pickled_module.pt"), ValueError,
     r"pickled_module\.pt is not a readable"),
    ("missing checkpoint", lambda c: safe_torch_load(c["tmp"] / "absent.pt"), FileNotFoundError, r"absent\.pt"),
    ("distill checkpoint of another set", lambda c: (
        atomic_torch_save({"meta": {"shape": [1, 1, 2, 2]}}, c["tmp"] / "ck.pt"),
        distill(init_synthetic(c["ds"], 1), c["ds"], dm_objective,
                RandomPool.for_dataset("ConvNet", c["ds"], **SMALL), 1, checkpoint=c["tmp"] / "ck.pt",
                progress=False)), ValueError, r"ck\.pt was made for shape=\[1, 1, 2, 2\]"),
    ("truncated pool file", lambda c: (
        c["tmp"].joinpath("pool.pt").write_bytes(c["pool"].path.read_bytes()[:300]),
        PretrainedPool("ConvNet", c["ds"], num_models=1, epochs=1, path=c["tmp"] / "pool.pt", train_per_class=2,
                       progress=False, **SMALL)), ValueError, r"pool\.pt is not a readable ddkit checkpoint"),
    ("pool file of another architecture", lambda c: PretrainedPool(
        "MLP", c["ds"], num_models=1, epochs=1, path=c["pool"].path, train_per_class=2, progress=False),
     ValueError, r"model='ConvNet'.*model='MLP'"),
    ("truncated trajectory", lambda c: Trajectory.load(c["tmp"] / "truncated.pt"), ValueError,
     r"truncated\.pt is not a readable"),
    ("a synthetic set given as a trajectory", lambda c: Trajectory.load(c["tmp"] / "synset.pt"), ValueError,
     r"synset\.pt is not a ddkit trajectory"),
    ("trajectory of another architecture", lambda c: Trajectory.load(c["tmp"] / "traj.pt", model="ResNet18"),
     ValueError, r"'ConvNet'.*'ResNet18'"),
    ("trajectory from another ddkit version", lambda c: (
        atomic_torch_save({**c["traj"].to_dict(), "meta": {**c["traj"].meta, "format": "ddkit.trajectory/0"}},
                          c["tmp"] / "old_traj.pt"),
        Trajectory.load(c["tmp"] / "old_traj.pt")), ValueError, r"old_traj\.pt.*format='ddkit\.trajectory/0'"),
    ("pool file from another ddkit version", lambda c: (
        atomic_torch_save({"meta": {**c["pool"].meta, "format": 0}, "states": c["pool"].states}, c["tmp"] / "old.pt"),
        PretrainedPool("ConvNet", c["ds"], num_models=1, epochs=1, path=c["tmp"] / "old.pt", train_per_class=2,
                       progress=False, test_samples=0, **SMALL)), ValueError, r"old\.pt was made for format=0"),
    ("truncated GAN generator file", lambda c: load_checkpoint(c["tmp"] / "truncated.pt", c["ds"]), ValueError,
     r"truncated\.pt"),
    ("pool file given as a GAN generator", lambda c: load_checkpoint(c["pool"].path, c["ds"]), ValueError,
     r"pools/.*\.pt was made for format=1.*ddkit\.generative"),
    ("truncated result.json", lambda c: read_result(c["tmp"] / "result.json"), ValueError,
     r"result\.json: not a readable"),
    ("result file that is not a ddkit record", lambda c: read_result(c["tmp"] / "list.json"), ValueError,
     r"list\.json.*lacks"),
    # --- notebook parameters
    ("misspelt parameter key", lambda c: check_params({}, {}, defaults=NB_OK, extra={**NB_OK, "ipcc": 1}), ValueError,
     r"'ipcc' \(did you mean 'ipc'\?\)"),
    ("string for an int parameter", lambda c: check_params({}, {}, defaults=NB_OK, extra={**NB_OK, "ipc": "10"}), ValueError,
     r"ipc must be int, got str '10'"),
    ("bool for a number parameter", lambda c: check_params({}, {}, defaults=NB_OK, extra={**NB_OK, "num_eval": True}),
     ValueError, r"num_eval must be int, got bool True"),
    ("None for a parameter", lambda c: check_params({}, {}, defaults=NB_OK, extra={**NB_OK, "seed": None}), ValueError,
     r"seed must be int, got NoneType None"),
    ("unknown dataset parameter", lambda c: check_params({}, {}, defaults=NB_OK, extra={**NB_OK, "dataset": "mnist6k"}),
     ValueError, r"dataset='mnist6k'"),
    ("device parameter that does not exist", lambda c: check_params({}, {}, defaults=NB_OK, extra={**NB_OK, "device": "tpu"}),
     ValueError, r"device='tpu'"),
    # --- sweep grids
    ("grid: unknown top-level key", lambda c: grid(c, GRID + "parms: {ipc: 1}\n"), ValueError, r"'parms'"),
    ("grid: empty list", lambda c: grid(c, GRID + "grid:\n  ipc: []\n"), ValueError, r"ipc.*empty list"),
    ("grid: wrong-typed value in a list", lambda c: grid(c, GRID + "grid:\n  ipc: [1, two]\n"), ValueError,
     r"ipc.*'two'"),
    ("grid: misspelt parameter", lambda c: grid(c, GRID + "params: {iteratons: 3}\n"), ValueError,
     r"'iteratons'.*iterations"),
    ("grid: unknown notebook", lambda c: grid(c, "notebook: 77_nothing.ipynb\n"), ValueError,
     r"'77_nothing\.ipynb'"),
    ("grid: malformed YAML", lambda c: grid(c, GRID + "params: {ipc: [1,\n"), ValueError, r"malformed YAML"),
]

# ------------------------------------------------------------------------------ classes of bad input
# Every label argument of every loss, every scalar parameter of every loss and every probability
# argument, each with the values a user gets wrong; the message names the argument and the value.
K = 4
F4, FMAP, Y4 = torch.randn(4, 3), torch.randn(4, 2, 2, 2), torch.arange(4)
LOGITS = torch.randn(4, K)
G = [torch.ones(3)]

LABEL_ARGS = {  # "loss(label argument)": call with that argument replaced
    "class_prototypes(y)": lambda y: class_prototypes(F4, y, K),
    "mean_embedding_loss(y_real)": lambda y: mean_embedding_loss(F4, y, F4, Y4, K),
    "mean_embedding_loss(y_syn)": lambda y: mean_embedding_loss(F4, Y4, F4, y, K),
    "class_centralization_loss(y_syn)": lambda y: class_centralization_loss(F4, y, K, 0.1, 1.0),
    "local_covariance_loss(y_real)": lambda y: local_covariance_loss(FMAP, y, FMAP, Y4, K),
    "local_covariance_loss(y_syn)": lambda y: local_covariance_loss(FMAP, Y4, FMAP, y, K),
    "semantic_diversity_loss(y_real)": lambda y: semantic_diversity_loss(F4, y, F4, Y4, K),
    "semantic_diversity_loss(y_syn)": lambda y: semantic_diversity_loss(F4, Y4, F4, y, K, method="direct"),
}
LABEL_CASES = [(f"{loss} holds {bad}", call, loss.split("(")[1][:-1], bad)
               for loss, call in LABEL_ARGS.items() for bad in (K, -1, 7)]

NAN, INF = float("nan"), float("inf")
SCALAR_ARGS = {  # "loss(parameter)": (call with that parameter, bad values)
    "class_centralization_loss(alpha)": (lambda v: class_centralization_loss(F4, Y4, K, v, 1.0),
                                         [-1.0, 0, NAN, INF, "0.1", None]),
    "class_centralization_loss(beta)": (lambda v: class_centralization_loss(F4, Y4, K, 0.1, v), [-0.5, NAN, INF]),
    "standardize_logits(tau)": (lambda v: standardize_logits(LOGITS, v), [0, -1.0, NAN, INF, "2"]),
    "standardize_logits(eps)": (lambda v: standardize_logits(LOGITS, 2.0, eps=v), [-1e-7, NAN]),
    "skd_loss(tau)": (lambda v: skd_loss(LOGITS, LOGITS, v), [0, -2.0, NAN, torch.tensor(-1.0)]),
    "skd_loss(tau), no standardisation": (lambda v: skd_loss(LOGITS, LOGITS, v, standardize=False), [0, -2.0]),
    "skd_loss(eps)": (lambda v: skd_loss(LOGITS, LOGITS, 2.0, eps=v), [-1.0, NAN]),
    "historical_prototype_loss(scale)": (lambda v: historical_prototype_loss(F4, F4, scale=v), [-1.0, NAN, INF]),
    "PrototypeBank(momentum)": (lambda v: PrototypeBank(K, 3, momentum=v), [-0.1, 1.5, NAN, "0.99"]),
    "effect_alignment_loss(real_coef)": (lambda v: effect_alignment_loss(G, G, G, real_coef=v), [NAN, INF, "1"]),
    "effect_alignment_loss(weights)": (lambda v: effect_alignment_loss(G, G, G, weights=[v]), [-1.0, NAN, INF]),
    "effect_alignment_squared_loss(weights)": (lambda v: effect_alignment_squared_loss(G, G, G, weights=[v]),
                                               [-1.0, NAN]),
    "effect_alignment_squared_loss(real_coef)": (lambda v: effect_alignment_squared_loss(G, G, G, real_coef=v),
                                                 [INF]),
    "effect_alignment_vector_loss(real_coef)": (lambda v: effect_alignment_vector_loss(G, G, G, real_coef=v), [NAN]),
    "effect_alignment_vector_loss(weights)": (lambda v: effect_alignment_vector_loss(G, G, G, weights=[v]),
                                              [-1.0, NAN]),
    "replacement_alpha(n_data)": (lambda v: replacement_alpha(v, 1, 1), [-1, NAN, "10"]),
    "replacement_alpha(n_removed)": (lambda v: replacement_alpha(10, v, 1), [-1, INF]),
    "replacement_alpha(n_added)": (lambda v: replacement_alpha(10, 1, v), [-1]),
}
SCALAR_CASES = [(f"{arg} = {bad!r}", call, arg.split("(")[1].split(")")[0], bad)
                for arg, (call, bads) in SCALAR_ARGS.items() for bad in bads]

PROBABILITY_ARGS = {  # "function(probability)": call with that probability
    "evaluate_synset(cutmix_p)": lambda c, v: ev(c, cutmix_p=v),
    "train_classifier(cutmix_p)": lambda c, v: train_classifier(
        get_model("ConvNet", 1, 10, 28, width=8), c["x"], c["y"], epochs=1, cutmix_p=v),
    "train_together(cutmix_p)": lambda c, v: train_together(
        [get_model("ConvNet", 1, 10, 28, width=8) for _ in range(2)], c["x"], c["y"], epochs=1,
        generators=[make_generator(0), make_generator(1)], cutmix_p=v),
    "DSA(flip)": lambda c, v: DSA(flip=v),
}
PROBABILITY_CASES = [(f"{arg} = {bad!r}", call, arg.split("(")[1][:-1], bad)
                     for arg, call in PROBABILITY_ARGS.items() for bad in (2, 1.5, -0.1, NAN)]


def _names_value(name, bad) -> str:
    """A pattern for a message that names the argument, then the value."""
    shown = repr(bad.item()) if isinstance(bad, torch.Tensor) else str(bad) if isinstance(bad, float) else repr(bad)
    return rf"{re.escape(name)}\b.*{re.escape(shown)}"


@pytest.mark.parametrize("kind, call, name, bad", LABEL_CASES, ids=[c[0] for c in LABEL_CASES])
def test_every_label_argument_of_every_loss_is_range_checked(kind, call, name, bad):
    with pytest.raises(ValueError, match=rf"{name} holds label {bad}; labels must be in 0\.\.{K - 1}"):
        call(torch.tensor([0, 1, bad, 2]))


@pytest.mark.parametrize("kind, call, name, bad", SCALAR_CASES, ids=[c[0] for c in SCALAR_CASES])
def test_every_scalar_parameter_of_every_loss_is_checked(kind, call, name, bad):
    with pytest.raises(ValueError, match=_names_value(name, bad)):
        call(bad)


@pytest.mark.parametrize("kind, call, name, bad", PROBABILITY_CASES, ids=[c[0] for c in PROBABILITY_CASES])
def test_every_probability_is_checked_before_training(ctx, no_compute, kind, call, name, bad):
    with pytest.raises(ValueError, match=_names_value(name, bad)):
        call(ctx, bad)


def test_the_scalar_cases_cover_every_loss_with_a_scalar_parameter():
    """A loss of ``ddkit.losses`` that gains a scalar parameter needs a bad-input case here."""
    import inspect

    from ddkit import losses
    scalars = {"alpha", "beta", "tau", "eps", "scale", "momentum", "real_coef", "weights", "n_data", "n_removed",
               "n_added"}
    want = {(name, p) for name in losses.__all__ + ["effect_alignment_squared_loss", "effect_alignment_vector_loss"]
            for p in inspect.signature(getattr(losses, name)).parameters if p in scalars}
    covered = {(arg.split("(")[0], arg.split("(")[1].split(")")[0]) for arg in SCALAR_ARGS}
    assert want <= covered, want - covered


NB_OK = dict(dataset="mnist5k", data_root="", ipc=1, model="ConvNet", iterations=0, seed=0, device="cpu",
             eval_model="ConvNet", eval_epochs=1, num_eval=1, run_name="", results_dir="")


@pytest.fixture
def no_compute(monkeypatch):
    """Training or a backward pass before the check fails the case."""
    monkeypatch.setattr(evalmod, "train_classifier", lambda *a, **k: pytest.fail("trained before the check"))
    monkeypatch.setattr(torch.Tensor, "backward", lambda *a, **k: pytest.fail("backward before the check"))


def test_at_least_40_kinds():
    assert len({kind for kind, *_ in CASES}) == len(CASES) >= 40


@pytest.mark.parametrize("kind, call, error, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_with_a_message_naming_the_value(ctx, no_compute, kind, call, error, pattern):
    if kind.startswith("device cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that device")
    with pytest.raises(error, match=pattern):
        call(ctx)


def test_cuda_without_cuda_is_a_clear_message(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='cuda': CUDA is not available here; use 'auto' or 'cpu'"):
        resolve_device("cuda")


# ------------------------------------------------------------------------------ the CLI
def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ddkit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("args, pattern", [
    (["sweep", "no/such/grid.yaml"], r"no/such/grid\.yaml"),
    (["sweep", "{tmp}/bad.yaml"], r"'parms'"),
    (["sweep", "{tmp}/bad.yaml", "--set", "ipc=0"], r"'parms'"),
    (["report", "--formats", "md,xls"], r"xls"),
    (["sweep", "x.yaml", "--workers", "two"], r"--workers: invalid int value: 'two'"),
    (["distill"], r"invalid choice: 'distill'"),
])
def test_cli_bad_input_exits_2_with_a_message_not_a_traceback(tmp_path, args, pattern):
    (tmp_path / "bad.yaml").write_text(GRID + "parms: {ipc: 1}\n")
    r = cli(*[a.format(tmp=tmp_path) for a in args])
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert re.search(pattern, r.stderr), r.stderr
