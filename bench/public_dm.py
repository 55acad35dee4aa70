"""ddkit against the public DM code itself (VICO-UoE/DatasetCondensation, issue 18).

``python -m bench --public-dm PATH``: PATH is a checkout of VICO-UoE/DatasetCondensation made by the
user (nothing of it is copied into this repository). Each side runs in its own process, the sides
alternate round by round (public, ddkit, then ddkit, public, ...), with the same settings and data
(Fashion-MNIST, IPC 10, ConvNet-3, DSA, batch_real 256; ddkit's tensors fed to both):

* DM iteration: the public ``main_DM.main()`` itself runs ``--Iteration`` iterations (its
  evaluation and image saving stubbed out); an iteration's seconds are the gaps between its calls of
  ``get_network`` (one per iteration). ddkit: ``distill`` + ``dm_objective`` on the path a
  paper-length notebook run takes by default (``compile="auto"`` resolved for 20000 iterations).
  A second ddkit arm runs the same with ``amp="bf16"`` (the notebooks' ``amp`` parameter; float32 is
  the default): its accuracy check is ``bench.amp_accuracy``.
* evaluate_synset: the public ``utils.evaluate_synset`` on N fresh networks (one by one) against
  ``ddkit.evaluate.evaluate_synset(num_models=N, compile="auto")`` as the notebooks call it (one by
  one on the CPU, trained together on CUDA; compiled when the work is long enough), same epochs
  (the public loop runs ``epoch_eval_train + 1`` passes, so it gets ``epochs - 1``), test pass
  included; accuracies of both are reported.

Torch-compatibility patches, applied in memory when the public modules are loaded (the files on
disk are untouched), :data:`PATCHES`: ``networks.py`` flattens with ``.view``, which current torch
refuses on the channels-last activations DSA's crop produces -> ``.reshape``; ``main_DM.py`` builds
its labels with ``torch.tensor(list of numpy arrays)`` (slow and warned about) -> ``np.array`` first.
Without PATH the benchmark says so (``skipped``) and the suite runs the rest.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

#: (file, text, replacement) applied to the public sources in memory
PATCHES = (
    ("networks.py", ".view(out.size(0), -1)", ".reshape(out.size(0), -1)"),
    ("main_DM.py", "torch.tensor([np.ones(args.ipc)*i for i in range(num_classes)]",
     "torch.tensor(np.array([np.ones(args.ipc)*i for i in range(num_classes)])"),
)
SETTINGS = dict(dataset="fashion_mnist", ipc=10, batch_real=256, model="ConvNet", paper_iterations=20000)


# --------------------------------------------------------------------------- worker side

def _load_public(path: Path, name: str):
    """Import ``name`` from the public checkout with :data:`PATCHES` applied (registered in sys.modules)."""
    src = (path / f"{name}.py").read_text()
    for file, old, new in PATCHES:
        if file == f"{name}.py":
            if old not in src:
                raise RuntimeError(f"patch for {file} no longer applies (text {old!r} not found): is {path} "
                                   "a checkout of VICO-UoE/DatasetCondensation?")
            src = src.replace(old, new)
    mod = types.ModuleType(name)
    mod.__file__ = str(path / f"{name}.py")
    sys.modules[name] = mod
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod


def _public_modules(path: Path):
    sys.path.insert(0, str(path))
    _load_public(path, "networks")
    utils = _load_public(path, "utils")
    main_dm = _load_public(path, "main_DM")
    return utils, main_dm


def _ddkit_data():
    from ddkit.data import load_dataset

    return load_dataset(SETTINGS["dataset"])


def _public_dataset(utils, ds):
    import torch

    def get_dataset(dataset, data_path):
        dst_train = utils.TensorDataset(ds.x_train, ds.y_train)
        dst_test = utils.TensorDataset(ds.x_test, ds.y_test)
        testloader = torch.utils.data.DataLoader(dst_test, batch_size=256, shuffle=False, num_workers=0)
        return (ds.channels, tuple(ds.im_size), ds.num_classes, list(ds.classes), list(ds.mean), list(ds.std),
                dst_train, dst_test, testloader)

    return get_dataset


def _public_dm_iterations(path: Path, iterations: int) -> list:
    utils, main_dm = _public_modules(path)
    ds = _ddkit_data()
    stamps = []
    real_get_network = main_dm.get_network

    def get_network(*a, **k):
        stamps.append(time.perf_counter())
        return real_get_network(*a, **k)

    main_dm.get_network = get_network
    main_dm.get_dataset = _public_dataset(utils, ds)
    main_dm.evaluate_synset = lambda it, net, x, y, loader, args: (net, 0.0, 0.0)
    main_dm.save_image = lambda *a, **k: None
    out = tempfile.mkdtemp(prefix="public_dm_")
    sys.argv = ["main_DM.py", "--dataset", "FashionMNIST", "--ipc", str(SETTINGS["ipc"]), "--num_exp", "1",
                "--num_eval", "1", "--eval_mode", "none", "--Iteration", str(iterations), "--batch_real",
                str(SETTINGS["batch_real"]), "--data_path", out, "--save_path", out]
    main_dm.main()
    # calls: one per iteration 0..Iteration-1, then the (stubbed) evaluation's and the last iteration's
    return [b - a for a, b in zip(stamps[:iterations], stamps[1:iterations])]


def _ddkit_dm_iterations(iterations: int, amp: str = "off") -> tuple:
    from ddkit.distill import distill, dm_objective, init_synthetic
    from ddkit.pools import RandomPool
    from ddkit.speed import forward_flops, resolve_compile
    from ddkit.utils import make_generator

    ds = _ddkit_data()
    syn = init_synthetic(ds, SETTINGS["ipc"], generator=make_generator(0))
    pool = RandomPool.for_dataset(SETTINGS["model"], ds)
    n_img = ds.num_classes * SETTINGS["batch_real"] + 3 * len(syn.images)
    flag = resolve_compile("auto", SETTINGS["paper_iterations"] * n_img * forward_flops(
        pool.draw(make_generator(0)), (ds.channels, *ds.im_size)), label="bench (paper-length DM run)")
    stamps, rss = [time.perf_counter()], {}

    def after_step(it, syn, batch):
        stamps.append(time.perf_counter())
        if it + 1 in (50, 200):
            rss[it + 1] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    distill(syn, ds, dm_objective, pool, iterations, batch_real=SETTINGS["batch_real"], progress=False,
            compile=flag, after_step=after_step, amp=amp)
    return [b - a for a, b in zip(stamps, stamps[1:])], {"compile": flag, "amp": amp, "peak_rss_mb": rss}


def _public_eval(path: Path, networks: int, epochs: int) -> tuple:
    import torch

    utils, _ = _public_modules(path)
    ds = _ddkit_data()
    x, y = _syn_set(ds)
    loader = torch.utils.data.DataLoader(utils.TensorDataset(ds.x_test, ds.y_test), batch_size=256, shuffle=False)
    args = argparse.Namespace(device="cpu", lr_net=0.01, epoch_eval_train=epochs - 1, batch_train=256, dsa=True,
                              dsa_strategy="color_crop_cutout_flip_scale_rotate", dsa_param=utils.ParamDiffAug())
    t0, accs = time.perf_counter(), []
    for i in range(networks):
        net = utils.get_network(SETTINGS["model"], ds.channels, ds.num_classes, tuple(ds.im_size))
        accs.append(100.0 * float(utils.evaluate_synset(i, net, x.clone(), y.clone(), loader, args)[2]))
    return time.perf_counter() - t0, accs


def _ddkit_eval(networks: int, epochs: int, seed: int, amp: str = "off") -> tuple:
    from ddkit.evaluate import evaluate_synset

    ds = _ddkit_data()
    x, y = _syn_set(ds)
    t0 = time.perf_counter()
    r = evaluate_synset(x, y, ds, num_models=networks, epochs=epochs, seed=seed, progress=False, compile="auto",
                        amp=amp)
    return time.perf_counter() - t0, r.accs


def _syn_set(ds):
    from ddkit.distill import init_synthetic
    from ddkit.utils import make_generator

    return init_synthetic(ds, SETTINGS["ipc"], generator=make_generator(0)).detached()


def worker(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=("public", "ddkit", "ddkit_bf16"))
    ap.add_argument("--task", choices=("dm", "eval"))
    ap.add_argument("--path", default=None)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--networks", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    if a.task == "dm":
        amp = "bf16" if a.side == "ddkit_bf16" else "off"
        result = ({"times": _public_dm_iterations(Path(a.path), a.iterations)} if a.side == "public" else
                  dict(zip(("times", "extra"), _ddkit_dm_iterations(a.iterations, amp))))
    else:
        seconds, accs = (_public_eval(Path(a.path), a.networks, a.epochs) if a.side == "public" else
                         _ddkit_eval(a.networks, a.epochs, a.seed, "bf16" if a.side == "ddkit_bf16" else "off"))
        result = {"seconds": seconds, "accs": accs}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(a.out).write_text(json.dumps(result))


# --------------------------------------------------------------------------- suite side

def _spawn(side: str, task: str, path, **kw) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [sys.executable, "-m", "bench.public_dm", "--side", side, "--task", task, "--out", str(out),
               "--threads", str(torch.get_num_threads())] + (["--path", str(path)] if path else [])
        for k, v in kw.items():
            cmd += [f"--{k}", str(v)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                            os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{side} {task} worker failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def _flops(networks_epochs: tuple) -> dict:
    """Convolution + matmul FLOPs the two tasks must do whatever the loop (``torch.utils.flop_counter``
    on one forward; a backward counted as twice its forward): a DM iteration = real forwards of
    ``classes x batch_real`` images + forward and backward of the synthetic images; one evaluation
    network = ``epochs`` forward + backward passes of the synthetic set + one test pass."""
    from ddkit.models import get_model
    from ddkit.speed import forward_flops

    ds = _ddkit_data()
    f = forward_flops(get_model(SETTINGS["model"], ds.channels, ds.num_classes, tuple(ds.im_size)),
                      (ds.channels, *ds.im_size))
    n_syn = ds.num_classes * SETTINGS["ipc"]
    epochs = networks_epochs[1]
    return {"dm_iteration": f * (ds.num_classes * SETTINGS["batch_real"] + 3 * n_syn),
            "eval_network": f * (3 * n_syn * epochs + len(ds.x_test))}


def _eval_arms(path, arms: dict, sides, rounds: int) -> dict:
    """``{arm: {side: [worker result, ...]}}``: each arm's sides alternate round by round; a ddkit seed is
    shared by both ddkit sides of a round, so float32 and bf16 train the same initial networks on the
    same DSA draws (paired accuracies)."""
    out = {}
    for arm, (nets, epochs) in arms.items():
        out[arm] = {s: [] for s in sides[arm]}
        for r in range(rounds):
            for side in (sides[arm] if r % 2 == 0 else sides[arm][::-1]):
                out[arm][side].append(_spawn(side, "eval", path if side == "public" else None, networks=nets,
                                             epochs=epochs, seed=r))
    return out


def run(quick: bool = False, public_dm: str | None = None) -> dict:
    from bench import flop_floor

    if not public_dm:
        return {"skipped": "no --public-dm PATH given: the comparison with the public DM code "
                           "(VICO-UoE/DatasetCondensation checkout) is not run"}
    path = Path(public_dm).expanduser().resolve()
    if not (path / "main_DM.py").is_file():
        raise ValueError(f"--public-dm {path}: no main_DM.py there; give a checkout of VICO-UoE/DatasetCondensation")
    # DM: 2 rounds x 8 iterations per side; evaluation (minutes per side): one round of one network and one
    # of the protocol's N = 5 (the float32 and the bf16 ddkit sides train the same networks)
    rounds, iters, eval_rounds = (1, 4, 1) if quick else (2, 8, 1)
    epochs = 20 if quick else 300
    arms = {"N1": (1, epochs), "N5": (2 if quick else 5, epochs)}
    sides = ("public", "ddkit", "ddkit_bf16")
    dm = {s: [] for s in sides}
    extra = []
    for r in range(rounds):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            res = _spawn(side, "dm", path if side == "public" else None, iterations=iters)
            dm[side] += res["times"][1:]  # the first iteration carries one-time costs
            extra += [res.get("extra")] if side == "ddkit" else []
    ev = _eval_arms(path, arms, {"N1": ("public", "ddkit"), "N5": sides}, eval_rounds)
    med = {s: statistics.median(t) for s, t in dm.items()}
    flops = _flops(arms["N1"])
    evaluation = {}
    for arm, by_side in ev.items():
        emed = {s: statistics.median(e["seconds"] for e in v) for s, v in by_side.items()}
        networks = arms[arm][0]
        evaluation[arm] = {"networks": networks, "epochs": arms[arm][1],
                           "seconds": {s: {"median": emed[s], "runs": by_side[s]} for s in by_side},
                           "ratio": emed["public"] / emed["ddkit"],
                           "floor": flop_floor(networks * flops["eval_network"], emed["public"], emed["ddkit"])}
        if "ddkit_bf16" in by_side:
            evaluation[arm]["ratio_bf16"] = emed["public"] / emed["ddkit_bf16"]
            evaluation[arm]["bf16_minus_float32"] = _paired(by_side["ddkit_bf16"], by_side["ddkit"])
    return {"settings": {**SETTINGS, "iterations_per_round": iters, "rounds": rounds, "eval_rounds": eval_rounds,
                         "eval_arms": arms},
            "patches": [list(p) for p in PATCHES], "path": str(path),
            "dm_seconds_per_iteration": {s: {"median": med[s], "times": dm[s]} for s in dm},
            "dm_ratio": med["public"] / med["ddkit"], "dm_ratio_bf16": med["public"] / med["ddkit_bf16"],
            "dm_floor": flop_floor(flops["dm_iteration"], med["public"], med["ddkit"]),
            "ddkit_dm": extra, "evaluation": evaluation}


def _paired(a_runs: list, b_runs: list) -> dict:
    """Per-network accuracy differences a - b (same seeds, same networks): mean and 95% t interval."""
    from ddkit.stats import paired_difference

    a = [x for run in a_runs for x in run["accs"]]
    b = [x for run in b_runs for x in run["accs"]]
    return paired_difference(a, b)


def rows(r: dict):
    dm = r["dm_seconds_per_iteration"]
    floor = r["dm_floor"]
    yield ("public DM iteration", dm["public"]["median"], dm["ddkit"]["median"], r["dm_ratio"],
           f"s/iteration, separate processes, ddkit compile={r['ddkit_dm'][0]['compile'] if r['ddkit_dm'] else '?'}; "
           f"float32 ceiling {floor['ceiling_ratio']:.2f}x (FLOPs at the matmul rate)")
    yield ("public DM iteration vs amp=bf16", dm["public"]["median"], dm["ddkit_bf16"]["median"],
           r["dm_ratio_bf16"], "s/iteration; accuracy check: bench.amp_accuracy")
    for arm in r["evaluation"].values():
        sec = arm["seconds"]
        accs = {s: [a for run in v["runs"] for a in run["accs"]] for s, v in sec.items()}
        name = f"public evaluate_synset (N={arm['networks']})"
        yield (name, sec["public"]["median"], sec["ddkit"]["median"], arm["ratio"],
               f"{arm['epochs']} ep; acc public {statistics.mean(accs['public']):.2f} ddkit "
               f"{statistics.mean(accs['ddkit']):.2f}; float32 ceiling {arm['floor']['ceiling_ratio']:.2f}x")
        if "ratio_bf16" in arm:
            d = arm["bf16_minus_float32"]
            yield (f"{name} vs eval amp=bf16", sec["public"]["median"], sec["ddkit_bf16"]["median"],
                   arm["ratio_bf16"], f"acc bf16 - float32 {d['mean']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}] "
                                      f"(paired over {d['n']} networks)")


if __name__ == "__main__":
    worker()
