"""``make gpu-check`` refuses clearly where no CUDA device is present (this CPU machine, or any
machine with CUDA hidden), and its check list covers every notebook, the device tests and the bench."""
import os
import subprocess
import sys
from pathlib import Path

from bench.gpu_check import checks

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_without_cuda_fails_with_a_clear_message():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check"], capture_output=True, text=True, env=env,
                          cwd=REPO)
    assert proc.returncode == 2
    assert "no CUDA device here" in proc.stderr and "NVIDIA GPU" in proc.stderr and proc.stdout == ""


def test_gpu_check_lists_every_notebook_the_device_tests_and_the_bench(tmp_path):
    names = [name for name, _, _ in checks(tmp_path)]
    notebooks = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9]*.ipynb"))
    assert names[:len(notebooks)] == [f"notebook {n} (device=cuda)" for n in notebooks]
    cmds = {name: (cmd, env) for name, cmd, env in checks(tmp_path)}
    assert ["-p", "device", "cuda"] == cmds["notebook 00_quickstart (device=cuda)"][0][-3:]
    assert "-p" not in cmds["notebook 10_report (device=cuda)"][0]  # no device parameter there
    assert cmds["unit tests taking a device (cuda)"][1] == {"DDKIT_TEST_DEVICES": "cuda"}
    assert names[-1] == "python -m bench --quick"
