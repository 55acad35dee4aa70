"""ddkit against the public DM code itself (VICO-UoE/DatasetCondensation).

``python -m bench --public-dm PATH``: PATH is a checkout of VICO-UoE/DatasetCondensation made by the
user (nothing of it is copied into this repository). Each side runs in its own process, the sides
alternate round by round (public, ddkit, then ddkit, public, ...), with the same settings and data
(Fashion-MNIST, IPC 10, ConvNet-3, DSA, batch_real 256; ddkit's tensors fed to both):

* DM iteration: the public ``main_DM.main()`` itself runs ``--Iteration`` iterations (its
  evaluation and image saving stubbed out); an iteration's seconds are the gaps between its calls of
  ``get_network`` (one per iteration). ddkit: ``distill`` + ``dm_objective`` on the path a
  paper-length notebook run takes by default (``compile="auto"`` resolved for 20000 iterations).
  A second ddkit arm runs the same with ``amp="bf16"`` (the notebooks' ``amp`` parameter; float32 is
  the default): its accuracy check is ``bench.amp_accuracy``. A third ddkit arm runs ``graphs=True``
  (the whole iteration one CUDA graph, :mod:`ddkit.fast.graphs`): three ``distill`` calls in one process,
  ``n``, ``n`` and ``2n`` iterations, each with its own capture; the first call's seconds per iteration
  (CUDA start-up and capture included) and the second's are reported as the first and second run,
  the third minus the second over ``n`` as the steady iteration.
  Then ``bench.graph_levers`` in its own process (at most :data:`LEVERS_TIMEOUT` seconds): the graph
  loop's GPU time by kernel and the same three calls with each remaining lever (``amp="bf16"``,
  ``channels_last``, ``compile=True``, bf16 with compile). The graph arms' first run is also compared
  "both cold": the public side's first ``n`` iterations with its first one (start-up) included.
* evaluate_synset: the public ``utils.evaluate_synset`` on N fresh networks (one by one) against
  ``ddkit.evaluate.evaluate_synset(num_models=N)`` with its defaults, same epochs
  (the public loop runs ``epoch_eval_train + 1`` passes, so it gets ``epochs - 1``), test pass
  included; accuracies of both are reported.

Torch-compatibility patches, applied in memory when the public modules are loaded (the files on
disk are untouched), :data:`PATCHES`: ``networks.py`` flattens with ``.view``, which current torch
refuses on the channels-last activations DSA's crop produces -> ``.reshape``; ``main_DM.py`` builds
its labels with ``torch.tensor(list of numpy arrays)`` (slow and warned about) -> ``np.array`` first.
Without PATH the benchmark says so (``skipped``) and the suite runs the rest. Both sides run on CUDA when
it is present (ddkit's pool is built on the run's device). An arm whose worker fails is reported with its
error; the others still run.

``python -m bench.public_dm --public-dm PATH [--quick] [--out FILE]``: this comparison alone, a table and
the JSON (``--quick``: DM with a few iterations, the eager and graph arms, one evaluation network of 300
epochs, one worker process per side).
"""
from __future__ import annotations

import argparse
import functools
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
#: The worker sides: the public code, ddkit's eager loop (float32, bf16) and its CUDA-graph loop.
SIDES = ("public", "ddkit", "ddkit_bf16", "ddkit_graphs")
#: Seconds the ``bench.graph_levers`` worker may take (``--quick``, full run).
LEVERS_TIMEOUT = {True: 120, False: 600}


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


@functools.lru_cache(maxsize=1)
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


def _ddkit_dm_iterations(iterations: int, amp: str = "off", compile="auto") -> tuple:
    """The eager loop's seconds per iteration (``graphs=False``); ``compile="auto"`` is resolved for a
    paper-length run."""
    from ddkit.core.utils import make_generator, resolve_device
    from ddkit.fast.speed import forward_flops, resolve_compile
    from ddkit.methods.distill import distill, dm_objective, init_synthetic
    from ddkit.methods.pools import RandomPool

    ds, dev = _ddkit_data(), resolve_device("auto")
    syn = init_synthetic(ds, SETTINGS["ipc"], generator=make_generator(0), device=dev)
    pool = RandomPool.for_dataset(SETTINGS["model"], ds, device=dev)
    n_img = ds.num_classes * SETTINGS["batch_real"] + 3 * len(syn.images)
    flag = compile if compile != "auto" else resolve_compile("auto", SETTINGS["paper_iterations"] * n_img * forward_flops(
        pool.draw(make_generator(0)), (ds.channels, *ds.im_size)), label="bench (paper-length DM run)")
    stamps, rss = [time.perf_counter()], {}

    def after_step(it, syn, batch):
        stamps.append(time.perf_counter())
        if it + 1 in (50, 200):
            rss[it + 1] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    distill(syn, ds, dm_objective, pool, iterations, batch_real=SETTINGS["batch_real"], progress=False,
            compile=flag, after_step=after_step, amp=amp, device=dev, graphs=False)
    return [b - a for a, b in zip(stamps, stamps[1:])], {"compile": flag, "amp": amp, "peak_rss_mb": rss,
                                                         "device": str(dev)}


def _ddkit_dm_graphs(iterations: int, **flags) -> dict:
    """``graphs=True`` (CUDA only): seconds per iteration of the first and second ``distill`` call of
    ``iterations`` (capture included) and of the steady iteration (a third call of twice as many, minus
    the second); the last losses of the calls (all start from the same set and seed). ``flags``: further
    ``distill`` keywords (``amp``, ``compile``, ``channels_last``: the levers of ``bench.graph_levers``)."""
    import torch

    from ddkit.core.utils import make_generator, resolve_device
    from ddkit.methods.distill import distill, dm_objective, init_synthetic
    from ddkit.methods.pools import RandomPool

    ds, dev = _ddkit_data(), resolve_device("auto")
    if dev.type != "cuda":
        return {"skipped": "graphs need CUDA"}
    pool = RandomPool.for_dataset(SETTINGS["model"], ds, device=dev)
    walls, losses = [], []
    for n in (iterations, iterations, 2 * iterations):
        syn = init_synthetic(ds, SETTINGS["ipc"], generator=make_generator(0), device=dev)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        hist = distill(syn, ds, dm_objective, pool, n, batch_real=SETTINGS["batch_real"], progress=False,
                       device=dev, graphs=True, **flags)
        walls.append(time.perf_counter() - t0)  # the history's last read synchronises
        losses.append([h["loss"] for h in hist])
    steady = (walls[2] - walls[1]) / iterations
    return {"first_run": walls[0] / iterations, "second_run": walls[1] / iterations, "steady": steady,
            "capture_seconds": walls[1] - iterations * steady, "walls": walls, "iterations": iterations,
            "first_losses": losses[0][:5], "last_loss": losses[2][-1],
            "flags": {k: str(v) for k, v in flags.items()},
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2 ** 20}


def _ddkit_dm_accuracy(iterations: int, graphs: bool, networks: int, epochs: int, seed: int) -> dict:
    """DM for ``iterations`` (eager loop or ``graphs=True``) from the same start and seed, then
    ``evaluate_synset`` with its defaults: the two loops' accuracies should agree within the seed spread."""
    import torch

    from ddkit.core.utils import make_generator, resolve_device
    from ddkit.evaluate import evaluate_synset
    from ddkit.methods.distill import distill, dm_objective, init_synthetic
    from ddkit.methods.pools import RandomPool

    ds, dev = _ddkit_data(), resolve_device("auto")
    syn = init_synthetic(ds, SETTINGS["ipc"], generator=make_generator(seed), device=dev)
    pool = RandomPool.for_dataset(SETTINGS["model"], ds, device=dev)
    t0 = time.perf_counter()
    hist = distill(syn, ds, dm_objective, pool, iterations, batch_real=SETTINGS["batch_real"], seed=seed,
                   progress=False, device=dev, graphs=graphs)
    seconds = time.perf_counter() - t0
    x, y = syn.detached()
    r = evaluate_synset(x, y, ds, num_models=networks, epochs=epochs, seed=seed, progress=False)
    return {"accs": r.accs, "distill_seconds": seconds, "iterations": iterations, "graphs": graphs,
            "mean_loss_last_10": sum(h["loss"] for h in hist[-10:]) / min(10, len(hist)),
            "cuda": torch.cuda.is_available()}


def _public_eval(path: Path, networks: int, epochs: int) -> tuple:
    import torch

    utils, _ = _public_modules(path)
    ds = _ddkit_data()
    x, y = _syn_set(ds)
    loader = torch.utils.data.DataLoader(utils.TensorDataset(ds.x_test, ds.y_test), batch_size=256, shuffle=False)
    args = argparse.Namespace(device="cuda" if torch.cuda.is_available() else "cpu", lr_net=0.01, epoch_eval_train=epochs - 1, batch_train=256, dsa=True,
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
    r = evaluate_synset(x, y, ds, num_models=networks, epochs=epochs, seed=seed, progress=False, amp=amp)
    return time.perf_counter() - t0, r.accs


def _syn_set(ds):
    from ddkit.core.utils import make_generator
    from ddkit.methods.distill import init_synthetic

    return init_synthetic(ds, SETTINGS["ipc"], generator=make_generator(0)).detached()


def _quick_side(side: str, path, iterations: int, graph_iterations: int, epochs: int, networks: int) -> dict:
    """``--quick``: one process per side (process start-up and data loading dominate short runs). The public
    side: its DM iterations, then the protocol's ``networks`` evaluation networks; ddkit: the graph arm first
    (its first run pays the process's CUDA start-up, as in its own process), the eager loop (compile off),
    then the same evaluation twice (seeds 0 and 1): the first run with its one-time costs (``eval_first``),
    the second as a user's next evaluation in the same process (``eval``)."""
    if side == "public":
        dm = {"times": _public_dm_iterations(Path(path), iterations)}
        seconds, accs = _public_eval(Path(path), networks, epochs)
        return {"dm": dm, "eval": {"seconds": seconds, "accs": accs}}
    graphs = _ddkit_dm_graphs(graph_iterations)
    times, extra = _ddkit_dm_iterations(iterations, compile=False)
    first = dict(zip(("seconds", "accs"), _ddkit_eval(networks, epochs, 0)))
    seconds, accs = _ddkit_eval(networks, epochs, 1)
    return {"dm": {"times": times, "extra": extra}, "graphs": graphs, "eval_first": first,
            "eval": {"seconds": seconds, "accs": accs}}


def worker(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=SIDES)
    ap.add_argument("--task", choices=("dm", "eval", "acc", "quick"))
    ap.add_argument("--path", default=None)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--networks", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--graph-iterations", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", default="auto", choices=("auto", "off"))
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    if a.task == "quick":
        result = _quick_side(a.side, a.path, a.iterations, a.graph_iterations, a.epochs, a.networks)
    elif a.task == "acc":
        result = _ddkit_dm_accuracy(a.iterations, a.side == "ddkit_graphs", a.networks, a.epochs, a.seed)
    elif a.task == "dm" and a.side == "ddkit_graphs":
        result = _ddkit_dm_graphs(a.iterations)
    elif a.task == "dm":
        amp = "bf16" if a.side == "ddkit_bf16" else "off"
        compile = False if a.compile == "off" else "auto"
        result = ({"times": _public_dm_iterations(Path(a.path), a.iterations)} if a.side == "public" else
                  dict(zip(("times", "extra"), _ddkit_dm_iterations(a.iterations, amp, compile))))
    else:
        seconds, accs = (_public_eval(Path(a.path), a.networks, a.epochs) if a.side == "public" else
                         _ddkit_eval(a.networks, a.epochs, a.seed, "bf16" if a.side == "ddkit_bf16" else "off"))
        result = {"seconds": seconds, "accs": accs}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(a.out).write_text(json.dumps(result))


# --------------------------------------------------------------------------- suite side

def _worker_env() -> dict:
    """The environment of a worker process: this one's, with the repository on ``PYTHONPATH``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                         os.environ.get("PYTHONPATH", "")])}


def _spawn(side: str, task: str, path, **kw) -> dict:
    """One worker process; a failed worker gives ``{"error": ...}`` (its stderr's end), not an exception."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [sys.executable, "-m", "bench.public_dm", "--side", side, "--task", task, "--out", str(out),
               "--threads", str(torch.get_num_threads())] + (["--path", str(path)] if path else [])
        for k, v in kw.items():
            cmd += [f"--{k}", str(v)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env())
        if proc.returncode != 0:
            return {"error": f"{side} {task} worker failed:\n{proc.stderr[-3000:]}"}
        return json.loads(out.read_text())


def _flops(networks_epochs: tuple) -> dict:
    """Convolution + matmul FLOPs the two tasks must do whatever the loop (``torch.utils.flop_counter``
    on one forward; a backward counted as twice its forward): a DM iteration = real forwards of
    ``classes x batch_real`` images + forward and backward of the synthetic images; one evaluation
    network = ``epochs`` forward + backward passes of the synthetic set + one test pass."""
    from ddkit.fast.speed import forward_flops
    from ddkit.models import get_model

    ds = _ddkit_data()
    f = forward_flops(get_model(SETTINGS["model"], ds.channels, ds.num_classes, tuple(ds.im_size)),
                      (ds.channels, *ds.im_size))
    n_syn = ds.num_classes * SETTINGS["ipc"]
    epochs = networks_epochs[1]
    return {"dm_iteration": f * (ds.num_classes * SETTINGS["batch_real"] + 3 * n_syn),
            "eval_network": f * (3 * n_syn * epochs + len(ds.x_test))}


def _floor(flops: float, ref_median: float, dd_median: float) -> dict:
    """:func:`bench.flop_floor` on the device the sides ran on: the float32 matrix-product rate of CUDA
    (TF32 off, 8192^2, median of 5, events) when present, else the CPU's."""
    import torch

    if not torch.cuda.is_available():
        from bench import flop_floor

        return flop_floor(flops, ref_median, dd_median)
    n, rates = 8192, []
    a, b = torch.randn(n, n, device="cuda"), torch.randn(n, n, device="cuda")
    tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
    try:
        a @ b
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            rates.append(2 * n ** 3 / (start.elapsed_time(end) / 1e3))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    floor = flops / statistics.median(rates)
    return {"gflop": flops / 1e9, "matmul_gflops": statistics.median(rates) / 1e9, "flop_floor_seconds": floor,
            "ceiling_ratio": ref_median / floor, "ddkit_fraction_of_floor": floor / dd_median}


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


def _accuracy_arm(iterations: int, seeds: int) -> dict:
    """``{side: [acc result per seed]}``: the eager and the graph DM loop, ``iterations`` each from the same
    start per seed, one evaluation network of 300 epochs (:func:`_ddkit_dm_accuracy`)."""
    return {side: [_spawn(side, "acc", None, iterations=iterations, networks=1, epochs=300, seed=seed)
                   for seed in range(seeds)] for side in ("ddkit", "ddkit_graphs")}


def _errors(results: dict) -> list:
    return [r["error"] for runs in results.values() for r in runs if "error" in r]


def _quick_arms(path, iters: int, warm: int, graph_iters: int, networks: int, epochs: int) -> tuple:
    """``--quick``: one worker per side (:func:`_quick_side`)."""
    pub = _spawn("public", "quick", path, iterations=iters, epochs=epochs, networks=networks)
    dd = _spawn("ddkit", "quick", None, iterations=iters, epochs=epochs, networks=networks,
                **{"graph-iterations": graph_iters})
    errors = [r["error"] for r in (pub, dd) if "error" in r]
    dm = {"public": pub.get("dm", {}).get("times", [])[warm:], "ddkit": dd.get("dm", {}).get("times", [])[warm:],
          "public_first_iteration": pub.get("dm", {}).get("times", [])[:1]}
    extra = [dd["dm"]["extra"]] if "dm" in dd else []
    ev = {"N5": {"public": [pub.get("eval", pub)], "ddkit": [dd.get("eval", dd)]}}
    if "eval_first" in dd:
        ev["N5"]["ddkit_first_run"] = [dd["eval_first"]]
    return dm, extra, dd.get("graphs", {"skipped": "the ddkit worker failed"}), ev, {}, errors


def _full_arms(path, rounds: int, iters: int, warm: int, graph_iters: int, arms: dict) -> tuple:
    """Each side its own process, alternating round by round; the accuracy arm on CUDA."""
    import torch

    eval_sides = {"N1": ("public", "ddkit"), "N5": ("public", "ddkit", "ddkit_bf16")}
    sides = ("public", "ddkit", "ddkit_bf16")
    dm = {s: [] for s in sides}
    extra, errors = [], []
    for r in range(rounds):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            res = _spawn(side, "dm", path if side == "public" else None, iterations=iters)
            errors += [res["error"]] if "error" in res else []
            dm[side] += res.get("times", [])[warm:]  # the first iterations carry one-time costs
            if side == "public":
                dm.setdefault("public_first_iteration", []).extend(res.get("times", [])[:1])
            extra += [res.get("extra")] if side == "ddkit" and "extra" in res else []
    graphs = _spawn("ddkit_graphs", "dm", None, iterations=graph_iters) if torch.cuda.is_available() else \
        {"skipped": "graphs need CUDA"}
    errors += [graphs["error"]] if "error" in graphs else []
    ev = _eval_arms(path, arms, eval_sides, 1)
    errors += [e for by_side in ev.values() for e in _errors(by_side)]
    accuracy = _accuracy_arm(1000, seeds=3) if torch.cuda.is_available() else {}
    errors += _errors(accuracy)
    return dm, extra, graphs, ev, accuracy, errors


def dm_schedule(quick: bool, cuda: bool) -> tuple:
    """``(rounds, iterations per eager worker, warm-up iterations left out of the median, graph iterations)``.
    On the CPU an iteration takes seconds: a few per worker. On CUDA it takes tens of milliseconds and
    the first ones are slower and vary while the GPU's clocks and cuDNN settle (bench/README.md), so each
    worker runs 60 and its median leaves out the first 10, and the graph arm's calls are 100 iterations
    long (its first run then spreads start-up over 100)."""
    if cuda:
        return (1 if quick else 2), 60, 10, 100
    return (1, 10, 1, 20) if quick else (2, 12, 1, 100)


def run(quick: bool = False, public_dm: str | None = None) -> dict:
    import torch

    if not public_dm:
        return {"skipped": "no --public-dm PATH given: the comparison with the public DM code "
                           "(VICO-UoE/DatasetCondensation checkout) is not run"}
    path = Path(public_dm).expanduser().resolve()
    if not (path / "main_DM.py").is_file():
        raise ValueError(f"--public-dm {path}: no main_DM.py there; give a checkout of VICO-UoE/DatasetCondensation")
    # DM: rounds x iterations per side (the eager arms' medians leave out their first `warm` iterations);
    # evaluation (seconds to minutes per side): one round of one network and, unless quick, one of the
    # protocol's N = 5 (the float32 and the bf16 ddkit sides train the same networks)
    rounds, iters, warm, graph_iters = dm_schedule(quick, torch.cuda.is_available())
    arms = {"N5": (5, 300)} if quick else {"N1": (1, 300), "N5": (5, 300)}
    if quick:
        dm, extra, graphs, ev, accuracy, errors = _quick_arms(path, iters, warm, graph_iters, *arms["N5"])
    else:
        dm, extra, graphs, ev, accuracy, errors = _full_arms(path, rounds, iters, warm, graph_iters, arms)
    levers = _spawn_levers(graph_iters, LEVERS_TIMEOUT[quick]) if torch.cuda.is_available() else \
        {"skipped": "graphs need CUDA"}
    errors += [levers["error"]] if "error" in levers else []
    med = {s: statistics.median(t) for s, t in dm.items() if t}
    flops = _flops((1, 300))
    evaluation = {}
    for arm, by_side in ev.items():
        ok = {s: [e for e in v if "error" not in e] for s, v in by_side.items()}
        emed = {s: statistics.median(e["seconds"] for e in v) for s, v in ok.items() if v}
        if not {"public", "ddkit"} <= set(emed):
            continue
        networks = arms[arm][0]
        evaluation[arm] = {"networks": networks, "epochs": arms[arm][1],
                           "seconds": {s: {"median": emed[s], "runs": ok[s]} for s in emed},
                           "ratio": emed["public"] / emed["ddkit"],
                           "floor": _floor(networks * flops["eval_network"], emed["public"], emed["ddkit"])}
        if "ddkit_first_run" in emed:
            evaluation[arm]["ratio_first_run"] = emed["public"] / emed["ddkit_first_run"]
        if "ddkit_bf16" in emed:
            evaluation[arm]["ratio_bf16"] = emed["public"] / emed["ddkit_bf16"]
            evaluation[arm]["bf16_minus_float32"] = _paired(ok["ddkit_bf16"], ok["ddkit"])
    out = {"settings": {**SETTINGS, "iterations_per_round": iters, "warm_up_iterations": warm, "rounds": rounds,
                        "graph_iterations": graph_iters,
                        "eval_arms": arms},
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "patches": [list(p) for p in PATCHES], "path": str(path),
           "dm_seconds_per_iteration": {s: {"median": med[s], "times": dm[s]} for s in med},
           "ddkit_dm": extra, "ddkit_dm_graphs": graphs, "ddkit_dm_graph_levers": levers, "evaluation": evaluation,
           "dm_accuracy": accuracy, "errors": errors}
    if "public" in med:
        for side, key in (("ddkit", "dm_ratio"), ("ddkit_bf16", "dm_ratio_bf16")):
            if side in med:
                out[key] = med["public"] / med[side]
        if "steady" in graphs:
            out["dm_ratio_graphs"] = _graph_ratios(med, graphs)
        out["dm_ratio_graph_levers"] = {name: _graph_ratios(med, r) for name, r in levers.get("levers", {}).items()
                                        if "steady" in r}
        out["dm_floor"] = _floor(flops["dm_iteration"], med["public"], graphs.get("steady", med.get("ddkit", 1.0)))
    return out


def _graph_ratios(med: dict, graphs: dict) -> dict:
    """The public iteration's median over a graph arm's seconds per iteration (steady, first and second run),
    and ``first_run_both_cold``: the first ``n`` iterations of each side in a fresh process, start-up included
    on both (the public side's first iteration, which the median leaves out, plus ``n - 1`` medians)."""
    ratios = {k: med["public"] / graphs[k] for k in ("steady", "first_run", "second_run")}
    if "public_first_iteration" in med:
        n = graphs["iterations"]
        public_first_run = (med["public_first_iteration"] + (n - 1) * med["public"]) / n
        ratios["first_run_both_cold"] = public_first_run / graphs["first_run"]
    return ratios


def _spawn_levers(iterations: int, timeout: float) -> dict:
    """``bench.graph_levers`` in its own process, stopped after ``timeout`` seconds: what it measured until
    then (it rewrites its JSON after every lever), with ``error`` when it failed or ran out of time."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "levers.json"
        cmd = [sys.executable, "-m", "bench.graph_levers", "--iterations", str(iterations), "--out", str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env(), timeout=timeout)
            error = None if proc.returncode == 0 else f"graph levers worker failed:\n{proc.stderr[-3000:]}"
        except subprocess.TimeoutExpired:
            error = f"graph levers worker stopped after {timeout:.0f} s (what it measured until then is kept)"
        record = json.loads(out.read_text()) if out.is_file() else {}
        return {**record, **({"error": error} if error else {})}


def _paired(a_runs: list, b_runs: list) -> dict:
    """Per-network accuracy differences a - b (same seeds, same networks): mean and 95% t interval."""
    from ddkit.core.stats import paired_difference

    a = [x for run in a_runs for x in run["accs"]]
    b = [x for run in b_runs for x in run["accs"]]
    return paired_difference(a, b)


def rows(r: dict):
    dm = r["dm_seconds_per_iteration"]
    floor = r.get("dm_floor", {"ceiling_ratio": float("nan")})
    pub = dm.get("public", {}).get("median")
    if "dm_ratio" in r:
        yield ("public DM iteration", pub, dm["ddkit"]["median"], r["dm_ratio"],
               f"s/iteration, eager loop, compile={r['ddkit_dm'][0]['compile'] if r['ddkit_dm'] else '?'}; "
               f"float32 ceiling {floor['ceiling_ratio']:.2f}x (FLOPs at the matmul rate)")
    if "dm_ratio_bf16" in r:
        yield ("public DM iteration vs amp=bf16", pub, dm["ddkit_bf16"]["median"],
               r["dm_ratio_bf16"], "s/iteration; accuracy check: bench.amp_accuracy")
    g = r.get("ddkit_dm_graphs", {})
    if "dm_ratio_graphs" in r:
        for key, what in (("steady", "steady"), ("first_run", "first run, capture included"),
                          ("second_run", "second run, capture included")):
            yield (f"public DM iteration vs graphs ({key})", pub, g[key], r["dm_ratio_graphs"][key],
                   f"s/iteration, {what}; {g['iterations']} iterations per call, capture {g['capture_seconds']:.2f} s")
        if "first_run_both_cold" in r["dm_ratio_graphs"]:
            yield ("public DM iteration vs graphs (first run, both cold)", None, g["first_run"],
                   r["dm_ratio_graphs"]["first_run_both_cold"],
                   f"the first {g['iterations']} iterations of a fresh process, start-up included on both sides")
    levers = r.get("ddkit_dm_graph_levers", {}).get("levers", {})
    for name, ratios in r.get("dm_ratio_graph_levers", {}).items():
        yield (f"public DM iteration vs graphs + {name} (steady)", pub, levers[name]["steady"], ratios["steady"],
               f"second run {ratios['second_run']:.2f}x, first run {ratios['first_run']:.2f}x, "
               f"both cold {ratios.get('first_run_both_cold', float('nan')):.2f}x; last loss "
               f"{levers[name]['last_loss']:.4g} (float32 graphs: {g.get('last_loss', float('nan')):.4g})")
    for arm in r["evaluation"].values():
        sec = arm["seconds"]
        accs = {s: [a for run in v["runs"] for a in run["accs"]] for s, v in sec.items()}
        name = f"public evaluate_synset (N={arm['networks']})"
        yield (name, sec["public"]["median"], sec["ddkit"]["median"], arm["ratio"],
               f"{arm['epochs']} ep; acc public {statistics.mean(accs['public']):.2f} ddkit "
               f"{statistics.mean(accs['ddkit']):.2f}; float32 ceiling {arm['floor']['ceiling_ratio']:.2f}x")
        if "ratio_first_run" in arm:
            yield (f"{name}, ddkit's first call", sec["public"]["median"], sec["ddkit_first_run"]["median"],
                   arm["ratio_first_run"], "one-time costs of the process included (cuDNN autotuning, capture)")
        if "ratio_bf16" in arm:
            d = arm["bf16_minus_float32"]
            yield (f"{name} vs eval amp=bf16", sec["public"]["median"], sec["ddkit_bf16"]["median"],
                   arm["ratio_bf16"], f"acc bf16 - float32 {d['mean']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}] "
                                      f"(paired over {d['n']} networks)")
    acc = {s: [a for run in v if "accs" in run for a in run["accs"]] for s, v in r.get("dm_accuracy", {}).items()}
    if acc.get("ddkit") and acc.get("ddkit_graphs"):
        runs = r["dm_accuracy"]["ddkit_graphs"]
        yield ("DM accuracy: eager loop vs graphs", statistics.mean(acc["ddkit"]), statistics.mean(acc["ddkit_graphs"]),
               None, f"% after {runs[0]['iterations']} iterations, {len(runs)} seeds, one network of 300 epochs each; "
                     f"eager {acc['ddkit']}, graphs {acc['ddkit_graphs']}")
    for e in r.get("errors", []):
        yield ("error", None, None, None, e.strip().splitlines()[-1][:200])


def main(argv=None) -> int:
    """This comparison alone: the table, then the JSON (to ``--out`` when given)."""
    ap = argparse.ArgumentParser(prog="python -m bench.public_dm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--public-dm", required=True, metavar="PATH", help="a VICO-UoE/DatasetCondensation checkout")
    ap.add_argument("--quick", action="store_true", help="a few DM iterations, one evaluation network")
    ap.add_argument("--out", default=None, help="write the JSON result here")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    r = run(quick=a.quick, public_dm=a.public_dm)
    r["quick"], r["bench_seconds"] = a.quick, time.perf_counter() - t0
    for name, ref, dd, ratio, note in rows(r):
        cells = [f"{v:.4g}" if isinstance(v, float) else "-" for v in (ref, dd, ratio)]
        print(f"{name:<48} public {cells[0]:>9}  ddkit {cells[1]:>9}  ratio {cells[2]:>7}  {note}")
    text = json.dumps(r, indent=1)
    if a.out:
        Path(a.out).write_text(text)
    else:
        print(text)
    return 1 if r.get("errors") else 0


if __name__ == "__main__":
    if "--side" in sys.argv[1:]:
        worker()
    else:
        sys.exit(main())
