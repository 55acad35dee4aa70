"""Files ddkit writes get the mode a plain ``open(path, "w")`` gives them: 0o666 less the umask."""
import os
import stat

import pytest
import torch

from ddkit.core.utils import atomic_torch_save, atomic_write_bytes, atomic_write_json, current_umask
from ddkit.runs.results import save_synset


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one afterwards."""
    old = os.umask(0o022)
    os.umask(old)

    def set_mask(mask):
        os.umask(mask)
        return mask
    yield set_mask
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077, 0o027])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    (tmp_path / "plain.txt").write_text("x")
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_json(tmp_path / "a.json", {"v": 1})
    atomic_torch_save({"meta": {}}, tmp_path / "a.pt")
    save_synset(tmp_path / "run", torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), dataset="d", ipc=1)
    want = 0o666 & ~mask
    assert _mode(tmp_path / "plain.txt") == want
    got = {p.name: oct(_mode(p)) for p in [tmp_path / "a.bin", tmp_path / "a.json", tmp_path / "a.pt",
                                           *sorted((tmp_path / "run").iterdir())]}
    assert got and set(got.values()) == {oct(want)}, got
