"""Speed flags against the plain path: equal losses / outputs / accuracies within
float tolerance. No timing assertions (timings live in bench/)."""
import copy

import pytest
import torch

from ddkit.core.utils import make_generator
from ddkit.evaluate import evaluate_synset
from ddkit.fast.speed import FastView, compile_available, compiled, fast_view, resolve_compile
from ddkit.methods.distill import distill, dm_objective, init_synthetic
from ddkit.methods.pools import RandomPool
from ddkit.models import get_model, has_batchnorm
from ddkit.train import accuracy, train_classifier

needs_compiler = pytest.mark.skipif(not compile_available(), reason="torch.compile needs a C++ compiler here")


def _close(a, b, rtol=1e-4, atol=1e-5):
    return torch.allclose(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", ["ConvNet", "ResNet10"])
def test_channels_last_view_matches_plain(name):
    torch.manual_seed(0)
    net = get_model(name, 1, 4, (28, 28))
    x = torch.randn(6, 1, 28, 28)
    view = fast_view(net, channels_last=True)
    assert isinstance(view, FastView) and fast_view(net, channels_last=True) is view  # cached
    assert fast_view(net) is net  # no flag: the module itself
    assert _close(view(x), net(x))
    assert _close(view.embed(x), net.embed(x))
    for a, b in zip(view.feature_maps(x), net.feature_maps(x)):
        assert _close(a, b)
    # the view delegates everything else to the module
    assert view.mid_layer == net.mid_layer and has_batchnorm(view) == has_batchnorm(net)
    assert view.classifier is net.classifier


def test_compiled_cache_leaves_module_untouched():
    net = get_model("ConvNet", 1, 4, (28, 28))
    keys = list(net.state_dict())
    fn = compiled(net, "embed")  # torch.compile is lazy: nothing is traced here
    assert compiled(net, "embed") is fn and compiled(net) is not fn
    assert list(net.state_dict()) == keys and len(list(net.modules())) == len(list(copy.deepcopy(net).modules()))


def test_resolve_compile():
    assert resolve_compile(False) is False and resolve_compile(True) is True
    assert resolve_compile("auto", 1.0) is False  # tiny work never compiles
    assert resolve_compile("auto", None) is False
    assert resolve_compile("auto", 1e18) is compile_available()
    with pytest.raises(ValueError, match="compile"):
        resolve_compile("fast")


def _dm_run(ds, **flags):
    syn = init_synthetic(ds, 2, generator=make_generator(0))
    pool = RandomPool.for_dataset("ConvNet", ds, width=16)
    hist = distill(syn, ds, dm_objective, pool, 3, batch_real=8, seed=3, progress=False, **flags, graphs=False)
    return [h["loss"] for h in hist], syn.images.detach()


def test_distill_channels_last_equals_plain(tiny_ds):
    l0, x0 = _dm_run(tiny_ds)
    l1, x1 = _dm_run(tiny_ds, channels_last=True)
    assert all(abs(a - b) <= 1e-4 * abs(a) for a, b in zip(l0, l1)), (l0, l1)
    assert _close(x0, x1)


def test_distill_compile_auto_small_run_stays_eager(tiny_ds, monkeypatch):
    import ddkit.fast.speed as speed

    def boom(*a, **k):
        raise AssertionError("compile='auto' must not compile a tiny run")

    monkeypatch.setattr(speed.torch, "compile", boom)
    l0, _ = _dm_run(tiny_ds)
    l1, _ = _dm_run(tiny_ds, compile="auto")
    assert l0 == l1


def _trained_pair(ds, flags, *, n, epochs, batch_size, atol):
    """Two identical ConvNets trained on the same batches, plain and with ``flags``; asserts
    equal parameters up to float reassociation and returns both."""
    x, y = ds.x_train[:n], ds.y_train[:n]
    nets = []
    for f in ({}, flags):
        net = get_model("ConvNet", 1, 4, (28, 28), width=16, generator=make_generator(1))
        train_classifier(net, x, y, epochs=epochs, batch_size=batch_size, generator=make_generator(2), **f)
        nets.append(net)
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        assert _close(p, q, rtol=1e-3, atol=atol)
    return nets


def test_train_classifier_channels_last_equals_plain(tiny_ds):
    nets = _trained_pair(tiny_ds, {"channels_last": True}, n=24, epochs=3, batch_size=8, atol=1e-5)
    acc = [accuracy(n, tiny_ds.x_test, tiny_ds.y_test) for n in nets]
    assert acc[0] == pytest.approx(acc[1], abs=5.0)
    assert accuracy(nets[0], tiny_ds.x_test, tiny_ds.y_test, batch_size=7, channels_last=True) == pytest.approx(
        accuracy(nets[0], tiny_ds.x_test, tiny_ds.y_test, batch_size=7), abs=2.0)


def test_evaluate_synset_channels_last_same_accuracy(tiny_ds):
    x, y = init_synthetic(tiny_ds, 2, generator=make_generator(0)).detached()
    kw = dict(num_models=2, epochs=4, progress=False, model_kw={"width": 16})
    a = evaluate_synset(x, y, tiny_ds, **kw, graphs=False)
    b = evaluate_synset(x, y, tiny_ds, channels_last=True, **kw, graphs=False)
    assert a.accs == pytest.approx(b.accs, abs=5.0)


@needs_compiler
def test_compile_matches_plain(tiny_ds):
    """One compiled pass through every flagged path (slow: compiling costs seconds per graph)."""
    torch._dynamo.reset()
    # distill: same losses to 1e-4 relative
    l0, x0 = _dm_run(tiny_ds)
    l1, x1 = _dm_run(tiny_ds, compile=True)
    assert all(abs(a - b) <= 1e-4 * abs(a) for a, b in zip(l0, l1)), (l0, l1)
    assert _close(x0, x1, rtol=1e-3, atol=1e-4)
    # training + the padded test pass: same parameters up to reassociation, accuracy within noise
    nets = _trained_pair(tiny_ds, {"compile": True}, n=16, epochs=2, batch_size=16, atol=1e-4)
    n_test = len(tiny_ds.x_test)
    plain = accuracy(nets[0], tiny_ds.x_test, tiny_ds.y_test, batch_size=n_test // 2 + 1)
    comp = accuracy(nets[0], tiny_ds.x_test, tiny_ds.y_test, batch_size=n_test // 2 + 1, compile=True)
    assert comp == pytest.approx(plain, abs=100.0 / n_test + 1e-9)


def test_no_grad_chunked_forward_equals_one_pass():
    from ddkit.methods.distill import per_class_forward

    net = get_model("ConvNet", 1, 4, (28, 28), width=8, generator=make_generator(0))
    x, y = torch.randn(37, 1, 28, 28, generator=make_generator(1)), torch.arange(37) % 4
    with torch.no_grad():
        whole = per_class_forward(net.embed, net, x, y, 4, chunk=0)
        chunked = per_class_forward(net.embed, net, x, y, 4, chunk=8)
    torch.testing.assert_close(chunked, whole)


_MALLOC_PROBE = """
import ctypes
import ddkit, torch
glibc = ddkit.MALLOC_TUNED or __import__("platform").libc_ver()[0] == "glibc"
mmapped = None
if glibc:
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Info
    before = libc.mallinfo2().hblkhd
    block = torch.empty(64 * 2 ** 20, dtype=torch.uint8)
    mmapped = libc.mallinfo2().hblkhd - before >= 64 * 2 ** 20   # glibc served the 64 MiB with mmap
print(ddkit.MALLOC_TUNED, mmapped)
"""


def test_keep_freed_memory_applies_on_glibc_and_can_be_disabled():
    """``import ddkit`` tells glibc not to mmap large blocks (a 64 MiB tensor then comes from the heap,
    mallinfo2's mmapped bytes do not grow); DDKIT_KEEP_FREED_MEMORY=0 leaves malloc alone (the block is
    mmapped). Off glibc nothing is applied."""
    import os
    import platform
    import subprocess
    import sys

    def probe(**env):
        return subprocess.run([sys.executable, "-c", _MALLOC_PROBE], capture_output=True, text=True, check=True,
                              env={**os.environ, **env}).stdout.split()

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    on, off = probe(), probe(DDKIT_KEEP_FREED_MEMORY="0")
    assert on == ([str(True), str(False)] if glibc else [str(False), "None"])
    assert off == ([str(False), str(True)] if glibc else [str(False), "None"])

def test_channels_last_auto_follows_the_compile_decision():
    from ddkit.fast.speed import resolve_channels_last

    assert resolve_channels_last("auto", True) is True and resolve_channels_last("auto", False) is False
    assert resolve_channels_last(True, False) is True and resolve_channels_last(False, True) is False
    with pytest.raises(ValueError, match="channels_last='yes'"):
        resolve_channels_last("yes", True)
