"""Data-parallel distill / evaluate_synset on CPU with gloo and 2 processes (ddkit.fast.distributed).

The workers are started with torch.multiprocessing and joined by torchrun's environment variables
(MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE), the path ``ddkit run --nproc`` takes. A failing
rank: tests/test_launch.py (through torchrun, which reports the first failure)."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from ddkit.core.utils import atomic_torch_save, make_generator
from ddkit.data import ImageDataset
from ddkit.evaluate import evaluate_synset
from ddkit.fast.distributed import ClassShard, Group, class_block, current, gather_in_order, my_items
from ddkit.methods.distill import distill, dm_objective, init_synthetic
from ddkit.methods.pools import RandomPool


def _tiny(ds, classes=3, per_class=24, test_per_class=10):
    """A 3-class, 24-image-per-class slice of mnist5k (blocks of unequal size over 2 ranks)."""
    tr = torch.cat([ds.class_indices(c)[:per_class] for c in range(classes)])
    te = torch.cat([torch.nonzero(ds.y_test == c).squeeze(1)[:test_per_class] for c in range(classes)])
    return ImageDataset("tiny", ds.x_train[tr].clone(), ds.y_train[tr].clone(), ds.x_test[te].clone(),
                        ds.y_test[te].clone(), ds.mean, ds.std, ds.classes[:classes], ds.dsa_strategy)


def tiny_run(ds, out=None) -> dict:
    """DM at tiny settings, both image steps, then the evaluation; the main rank saves the result."""
    torch.set_num_threads(1)
    result = {}
    for step in ("joint", "per_class"):
        syn = init_synthetic(ds, 2, generator=make_generator(0))
        pool = RandomPool.for_dataset("ConvNet", ds, width=8)
        hist = distill(syn, ds, dm_objective, pool, 3, lr_img=1.0, batch_real=8, seed=0, progress=False,
                       image_step=step, graphs=False)
        result[step] = (syn.images.detach().clone(), [h["loss"] for h in hist])
    x, y = syn.detached()
    res = evaluate_synset(x, y, ds, model="ConvNet", model_kw={"width": 8}, num_models=3, epochs=2,
                          batch_size=4, progress=False, graphs=False)
    result["accs"] = res.accs
    result["world_size"] = current().world_size
    if out is not None and Group(*_rank_world()).is_main:
        atomic_torch_save(result, out)
    return result


def _rank_world():
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _worker(rank, world, port, ds, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    try:
        tiny_run(ds, out)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(ds, out):
    mp.spawn(_worker, args=(2, _free_port(), ds, str(out)), nprocs=2, join=True)


@pytest.fixture(scope="module")
def tiny(mnist5k):
    return _tiny(mnist5k)


def test_two_ranks_match_one_process(tiny, tmp_path):
    one = tiny_run(tiny)
    out = tmp_path / "result.pt"
    _spawn(tiny, out)
    two = torch.load(out, weights_only=True)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    for step in ("joint", "per_class"):
        torch.testing.assert_close(two[step][0], one[step][0], rtol=0, atol=1e-5)
        assert two[step][1] == pytest.approx(one[step][1], rel=1e-5)  # logged loss: summed over ranks
        assert not torch.equal(one[step][0], init_synthetic(tiny, 2, generator=make_generator(0)).images)
    assert two["accs"] == one["accs"]  # networks 0, 2 on rank 0 and 1 on rank 1, gathered in order
    assert [p.name for p in tmp_path.iterdir()] == ["result.pt"]


def test_shards_and_gather_in_one_process():
    assert [class_block(10, Group(r, 4)) for r in range(4)] == [range(0, 2), range(2, 5), range(5, 7),
                                                                  range(7, 10)]
    shard = ClassShard(10, 3, Group(1, 4))
    assert shard.classes == range(2, 5) and shard.rows() == slice(6, 15) and shard.keep == range(2, 5)
    assert ClassShard(10, 3, Group(1, 4), replicate=True).keep is None
    assert my_items(5, Group(1, 2)) == [1, 3] and my_items(5, Group(0, 2)) == [0, 2, 4]
    assert gather_in_order(3, {2: "c", 0: "a", 1: "b"}, Group()) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="world_size=4 exceeds the 3 classes"):
        class_block(3, Group(0, 4))
