"""``ddkit run --nproc N``: the torchrun command, and a 2-process run whose rank 1 fails."""
import subprocess
import sys
import textwrap

import pytest

from ddkit.batch.launch import torchrun_command
from ddkit.cli import main

FAILING_SCRIPT = '''
import sys
import torch
from ddkit.core.utils import atomic_torch_save, make_generator
from ddkit.data import ImageDataset
from ddkit.fast.distributed import current
from ddkit.methods.distill import distill, dm_objective, init_synthetic
from ddkit.methods.pools import RandomPool

torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
ds = ImageDataset("rand", torch.randn(24, 1, 8, 8, generator=g), torch.arange(4).repeat(6),
                  torch.randn(8, 1, 8, 8, generator=g), torch.arange(4).repeat(2), (0.5,), (0.5,), list("abcd"))

def objective(batch):
    if batch.iteration == 1 and current().rank == 1:
        raise RuntimeError("rank 1 failed on purpose")
    return dm_objective(batch)

syn = init_synthetic(ds, 1, generator=make_generator(0))
distill(syn, ds, objective, RandomPool.for_dataset("ConvNet", ds, width=4, depth=1), 3, batch_real=4,
        dsa=False, progress=False)
if current().is_main:
    atomic_torch_save({"images": syn.images.detach()}, sys.argv[1])
'''


def test_torchrun_command_and_bad_input(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("notebook: 00_quickstart.ipynb\n")
    cmd = torchrun_command(str(grid), 4, overrides={"baselines": ["random"], "ipc": 1}, force=True)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert cmd[5:8] == ["-m", "ddkit.batch.launch", str(grid.resolve())]
    assert cmd[8:] == ["--set", 'baselines=["random"]', "--set", "ipc=1", "--force"]
    with pytest.raises(ValueError, match="nproc=0"):
        torchrun_command(str(grid), 0)
    with pytest.raises(ValueError, match="expected a params/grid file"):
        torchrun_command(str(tmp_path / "x.ipynb"), 2)
    assert main(["run", "--nproc", "2", str(tmp_path / "missing.py")]) == 2
    # an option typed after a params file would be swallowed as script arguments: refused, named
    with pytest.raises(ValueError, match=r"extra arguments \['--results-dir', 'out'\]"):
        torchrun_command(str(grid), 2, ["--results-dir", "out"])
    from ddkit.cli import _parse  # the CLI takes a params file's options after the target too
    a = _parse(["run", "--nproc", "2", str(grid), "--results-dir", "out", "--set", "ipc=3"])
    assert (a.nproc, a.results_dir, a.overrides, a.args) == (2, "out", [("ipc", 3)], [])


def test_failing_rank_fails_the_run_with_its_error(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(FAILING_SCRIPT))
    out = tmp_path / "out" / "result.pt"
    out.parent.mkdir()
    proc = subprocess.run([sys.executable, "-m", "ddkit.cli", "run", "--nproc", "2", str(script), "--", str(out)],
                          capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    root = text[text.index("Root Cause"):]  # torchrun's report: the first failure
    assert "rank 1 failed on purpose" in root and "rank      : 1" in root
    assert list(out.parent.iterdir()) == []  # nothing half-written


KERNELS_SCRIPT = '''
import os, subprocess, sys
child = ("import os, torch, torch.distributed as dist; from ddkit.fast.distributed import current; g = current(); "
         "t = torch.tensor([float(g.rank + 1)]); dist.all_reduce(t); "
         "os.write(1, (f'sum {int(t.item())}' + chr(10)).encode())")  # one write per line: ranks share stdout
for i in range(2):  # as ddkit.batch.launch runs a params file: one kernel (process group) per run, own prefix
    subprocess.run([sys.executable, "-c", child], env=dict(os.environ, DDKIT_DIST_PREFIX=f"ddkit-run-{i}"),
                   check=True, timeout=300)
'''


def test_one_process_group_per_run_under_torchrun(tmp_path):
    script = tmp_path / "kernels.py"
    script.write_text(KERNELS_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "ddkit.cli", "run", "--nproc", "2", str(script)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("sum 3") == 4  # 2 runs x 2 ranks, each all_reduce over both ranks: 1 + 2
