"""One device rule (``ddkit.core.utils.resolve_device``): every public entry point called with ``device=None``
asks the rule (CUDA when present, else the CPU) and builds where it says, so the objects of the usual
few lines (a pool, a synthetic set, a teacher) and the loops they go into agree on any machine; a
device the machine lacks is refused up front, listing the devices it has.

On the CPU the CUDA side is checked with a mocked ``torch.cuda`` where a function only resolves; on a
GPU machine (``make gpu-check``, ``make test``) the same walk checks real placement on CUDA."""
import pytest
import torch

import ddkit.core.utils as utils
from ddkit.core.utils import available_devices, check_same_device, make_generator, resolve_device, same_device
from ddkit.evaluate import evaluate_synset
from ddkit.methods.coreset import forgetting_counts, select
from ddkit.methods.distill import dm_objective, distill, init_synthetic
from ddkit.methods.dm import Comparison, make_pool
from ddkit.methods.ead import EADSynSet, distill_ead
from ddkit.methods.gan_checkpoint import build_gan
from ddkit.methods.gan_eval import evaluate_generator, random_real_eval
from ddkit.methods.gan_losses import dim_objective
from ddkit.methods.gan_train import stage1
from ddkit.methods.gan_stage2 import GANModelPool, stage2
from ddkit.methods.pools import IDMQueue, PretrainedPool, RandomPool
from ddkit.methods.trajectory import Trajectory

SMALL = {"width": 8}
EVAL = dict(num_models=1, epochs=1, progress=False)


@pytest.fixture(autouse=True)
def _no_default_device(monkeypatch):
    """These tests are about the rule itself: no ``$DDKIT_DEVICE`` (tests/conftest.py sets one)."""
    monkeypatch.delenv(utils.DEVICE_ENV, raising=False)


def test_ddkit_device_names_what_auto_means(monkeypatch):
    _mock_cuda(monkeypatch, 1)
    assert resolve_device(None) == torch.device("cuda")
    monkeypatch.setenv(utils.DEVICE_ENV, "cpu")
    assert resolve_device(None) == resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cuda") == torch.device("cuda")          # an explicit device still wins
    monkeypatch.setenv(utils.DEVICE_ENV, "cuda:7")
    with pytest.raises(ValueError, match="cuda:7"):
        resolve_device(None)


def _mock_cuda(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


# ------------------------------------------------------------------------------ resolve_device
@pytest.mark.parametrize("count, expect", [(0, "cpu"), (1, "cuda")])
@pytest.mark.parametrize("spelling", [None, "", "auto"])
def test_auto_is_cuda_when_present_else_cpu(monkeypatch, count, expect, spelling):
    _mock_cuda(monkeypatch, count)
    assert resolve_device(spelling) == torch.device(expect)


@pytest.mark.parametrize("count, device, match", [
    (1, "cuda:7", r"device='cuda:7': this machine has 1 CUDA device\(s\).*this machine has: cpu, cuda:0\)"),
    (2, "cuda:2", r"device='cuda:2'.*this machine has: cpu, cuda:0, cuda:1\)"),
    (0, "cuda", r"device='cuda': CUDA is not available here; use 'auto' or 'cpu' \(this machine has: cpu\)"),
    (0, "cuda:0", r"device='cuda:0': CUDA is not available.*this machine has: cpu\)"),
    (0, "gpu0", r"device='gpu0' is not a device.*this machine has: cpu\)"),
    (0, "meta", r"device='meta': ddkit runs on 'cpu', 'cuda' or 'mps'"),
    (1, 3, r"device=3: this machine has 1 CUDA device"),
])
def test_a_device_the_machine_lacks_is_refused_listing_what_it_has(monkeypatch, count, device, match):
    _mock_cuda(monkeypatch, count)
    with pytest.raises(ValueError, match=match):
        resolve_device(device)


def test_mps_where_absent_is_refused(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='mps': MPS is not available here \(this machine has: cpu"):
        resolve_device("mps")


def test_devices_the_machine_has_are_accepted(monkeypatch):
    _mock_cuda(monkeypatch, 2)
    assert available_devices()[:3] == ["cpu", "cuda:0", "cuda:1"]
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert same_device("cuda", "cuda:0") and not same_device("cuda:1", "cuda:0") and not same_device("cpu", "cuda")


def test_resolve_only_constructors_pick_cuda_when_present(monkeypatch):
    """Objects that only record a device before their first use follow the rule to CUDA."""
    _mock_cuda(monkeypatch, 1)
    assert GANModelPool(["ConvNet"], 1, 4, (28, 28)).device == torch.device("cuda")
    assert IDMQueue("ConvNet", 1, 4, (28, 28), initial_nets=0, **SMALL).device == torch.device("cuda")
    with pytest.raises(ValueError, match="cuda:7"):
        RandomPool("ConvNet", 1, 4, (28, 28), device="cuda:7", **SMALL)


# ------------------------------------------------------------------------------ the public API walk
@pytest.fixture
def asks_rule(monkeypatch):
    """Counts how often the rule's ``auto`` branch is taken (every entry point must take it)."""
    calls = []
    real = utils._auto_device
    monkeypatch.setattr(utils, "_auto_device", lambda: calls.append(1) or real())
    return calls


@pytest.fixture(scope="module")
def traj(tiny_ds):
    return Trajectory.train(tiny_ds, epochs=1, batch_size=40, model_kw=SMALL, progress=False)


@pytest.fixture(scope="module")
def gan(tiny_ds):
    return build_gan(tiny_ds, z_dim=8, gen_width=8, disc_width=8)


def _params(obj):
    return next(iter(obj.parameters())).device


WALK = {
    "RandomPool.for_dataset": lambda c: _params(RandomPool.for_dataset("ConvNet", c["ds"], **SMALL).net),
    "IDMQueue": lambda c: _params(IDMQueue("ConvNet", 1, 4, (28, 28), initial_nets=1, **SMALL).nets[0]),
    "PretrainedPool": lambda c: _params(PretrainedPool("ConvNet", c["ds"], num_models=1, epochs=0, build=False,
                                                       cache_dir=c["tmp"], progress=False, **SMALL)._net),
    "make_pool": lambda c: make_pool("random", c["ds"], model_kw=SMALL).device,
    "init_synthetic": lambda c: init_synthetic(c["ds"], 1, generator=make_generator(0)).images.device,
    "Comparison.start": lambda c: Comparison(c["ds"], num_models=1, epochs=1).start(1)[0].images.device,
    "distill": lambda c: _three_lines(c["ds"]),
    "evaluate_synset": lambda c: _ran(evaluate_synset(c["x"], c["y"], c["ds"], model_kw=SMALL, **EVAL)),
    "Comparison.evaluate": lambda c: _ran(Comparison(c["ds"], "standard", num_models=1, epochs=1, seed=0,
                                                     width=8).evaluate(c["x"], c["y"])),
    "select (herding)": lambda c: _ran(select("herding", c["ds"], 1, train_epochs=1)),
    "forgetting_counts": lambda c: _ran(forgetting_counts(c["ds"], epochs=1)),
    "build_gan": lambda c: _params(build_gan(c["ds"], z_dim=8, gen_width=8, disc_width=8).G),
    "GANModelPool": lambda c: GANModelPool(["ConvNet"], 1, 4, (28, 28)).device,
    "stage1": lambda c: _params(stage1(c["ds"], z_dim=8, gen_width=8, disc_width=8, gan_batch_size=8, gan_epochs=1,
                                       gan_iters=1, use_cache=False, progress=False).G),
    "stage2": lambda c: _params(stage2(c["gan"], c["ds"], dim_objective(0.01), pool_models=["ConvNet"], epochs=1,
                                       iterations=1, batch_size=8, pool_train_steps=1, pool_batch_size=8,
                                       use_cache=False, progress=False).G),
    "evaluate_generator": lambda c: _ran(evaluate_generator(c["gan"].G, c["ds"], 1, **EVAL)),
    "random_real_eval": lambda c: _ran(random_real_eval(c["ds"], 1, **EVAL)),
    "Trajectory.train": lambda c: _params(Trajectory.train(c["ds"], epochs=1, batch_size=40, model_kw=SMALL,
                                                           progress=False).build_model()),
    "Trajectory.get": lambda c: _params(Trajectory.get(c["ds"], epochs=1, batch_size=40, model_kw=SMALL,
                                                       results_dir=str(c["tmp"]), progress=False).teacher()),
    "Trajectory.teacher": lambda c: _params(c["traj"].teacher()),
    "EADSynSet.init_real": lambda c: EADSynSet.init_real(c["ds"], 1, c["traj"].teacher()).images.device,
    "distill_ead": lambda c: _ead(c["ds"], c["traj"]),
}


def _ran(_result):
    return resolve_device(None)  # a compute entry point: what it asked is counted by asks_rule


def _three_lines(ds):
    """The obvious three lines of the quickstart, all on their defaults: one iteration must run."""
    syn = init_synthetic(ds, 1, generator=make_generator(0))
    pool = RandomPool.for_dataset("ConvNet", ds, **SMALL)
    assert len(distill(syn, ds, dm_objective, pool, 1, batch_real=4, progress=False)) == 1
    return syn.images.device


def _ead(ds, traj):
    syn = EADSynSet.init_real(ds, 1, traj.teacher())
    distill_ead(syn, ds, traj, iterations=1, t_m=1, lr_img=0.01, lr_label=0.01, batch_real=8, batch_probe=8,
                progress=False)
    return syn.images.device


@pytest.mark.parametrize("name", list(WALK))
def test_every_entry_point_follows_the_rule_on_its_defaults(name, tiny_ds, traj, gan, tmp_path, asks_rule):
    ctx = dict(ds=tiny_ds, traj=traj, gan=gan, tmp=tmp_path, x=tiny_ds.x_train[::20], y=tiny_ds.y_train[::20])
    asks_rule.clear()
    where = WALK[name](ctx)
    assert asks_rule, f"{name} did not resolve device=None through ddkit.core.utils.resolve_device"
    assert same_device(where, resolve_device(None)), f"{name} built on {where}, the rule says {resolve_device(None)}"


# ------------------------------------------------------------------------------ handed objects
def test_a_pool_or_set_on_another_device_is_refused_before_compute(tiny_ds):
    syn = init_synthetic(tiny_ds, 1, generator=make_generator(0), device="cpu")
    pool = RandomPool.for_dataset("ConvNet", tiny_ds, device="cpu", **SMALL)
    pool.device = torch.device("meta")  # stands for a pool built on another GPU
    with pytest.raises(ValueError, match=r"distill runs on cpu but pool is on meta"):
        distill(syn, tiny_ds, dm_objective, pool, 1, batch_real=4, progress=False, device="cpu")
    with pytest.raises(ValueError, match=r"distill_ead runs on cpu but syn is on meta"):
        check_same_device(torch.device("cpu"), "distill_ead", syn=torch.zeros(1, device="meta"))
    check_same_device(torch.device("cpu"), "distill", syn=syn.images, pool=RandomPool.for_dataset(
        "ConvNet", tiny_ds, device="cpu", **SMALL), other=object())  # same device / no device: accepted


BUILDERS = ["RandomPool.for_dataset", "PretrainedPool", "make_pool", "init_synthetic", "Comparison.start",
            "build_gan", "GANModelPool", "Trajectory.teacher"]


@pytest.mark.parametrize("name", BUILDERS)
def test_builders_place_their_objects_where_the_rule_says(name, tiny_ds, traj, gan, tmp_path, monkeypatch):
    """The rule pointed at a device other than the CPU (``meta``: shapes only): what a builder makes on its
    defaults must land there, not on the CPU or on its dataset's device."""
    monkeypatch.setattr(utils, "_auto_device", lambda: torch.device("meta"))
    ctx = dict(ds=tiny_ds, traj=traj, gan=gan, tmp=tmp_path)
    assert WALK[name](ctx) == torch.device("meta")


# ------------------------------------------------------------------------------ determinism
def test_deterministic_turns_everything_on_restores_it_and_is_recorded(monkeypatch):
    from ddkit.core.utils import deterministic, determinism_settings, environment_info, set_deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = determinism_settings()
    assert before["cublas_workspace_config"] is None
    with deterministic():
        on = determinism_settings()
        assert on["use_deterministic_algorithms"] and on["warn_only"] and on["cudnn_deterministic"]
        assert not on["cudnn_benchmark"] and not on["tf32_matmul"] and not on["tf32_cudnn"]
        assert on["cublas_workspace_config"] == ":4096:8"
        rec = environment_info("cpu")
        assert rec["deterministic"] is True and rec["determinism"] == on
        with deterministic(False):  # PyTorch's defaults: TF32 convolutions back on
            off = determinism_settings()
            assert not off["use_deterministic_algorithms"] and off["tf32_cudnn"] and not off["tf32_matmul"]
            assert environment_info("cpu")["deterministic"] is False
        assert determinism_settings() == on
    assert determinism_settings() == before
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match=r"deterministic=.*expected True or False"):
            set_deterministic(bad)
    assert determinism_settings() == before


def test_a_gan_pool_on_another_device_is_refused_and_data_follows_the_pool(tiny_ds, gan):
    from ddkit.core.utils import on_device
    from ddkit.methods.gan_stage2 import match_generator

    pool = GANModelPool(["ConvNet"], 1, 4, (28, 28), device=gan.G.device)
    pool.device = torch.device("meta")  # stands for a pool built on another GPU
    with pytest.raises(ValueError, match=r"match_generator runs on .* but pool is on meta"):
        match_generator(gan, tiny_ds, dim_objective(0.01), pool=pool, epochs=1, progress=False)
    assert on_device(tiny_ds, tiny_ds.device) is tiny_ds  # no copy when the data is already there
    moved = on_device(tiny_ds, torch.device("meta"))
    assert moved is not tiny_ds and moved.x_train.device == torch.device("meta")
