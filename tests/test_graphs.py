"""The device-side DM loop (ddkit.fast.graphs, distill(graphs=...)): its draws, its iteration against the
library's per-class computation, checkpoints; on CUDA, graph replays against eager calls."""
import pytest
import torch

from ddkit.augment import DSA
from ddkit.methods.device_loop import DeviceIteration, graphs_unsupported
from ddkit.methods.distill import distill, dm_objective, init_synthetic
from ddkit.core.utils import make_generator
from ddkit.fast.speed import compile_available
from ddkit.fast.graphs import capture, class_table, reinit_on_device_, reinit_unsupported, sample_class_batches
from ddkit.methods.pools import IDMQueue, RandomPool
from ddkit.models import ConvNet, reinit_


def _params_with_every_family(aug, groups, seed=0):
    p = aug.sample(groups, generator=make_generator(seed))
    p.op = torch.arange(groups) % len(aug.ops)  # every family present
    return p


@pytest.mark.parametrize("strategy", ["color_crop_cutout_flip_scale_rotate", "color_crop_cutout_scale_rotate"])
def test_apply_on_device_equals_apply_values_and_gradients(strategy):
    aug = DSA(strategy)
    p = _params_with_every_family(aug, 8)
    group = torch.randint(0, 8, (24,), generator=make_generator(1))
    x = torch.randn(24, 3, 16, 16, generator=make_generator(2), requires_grad=True)
    w = torch.randn(24, 3, 16, 16, generator=make_generator(3))
    a = aug.apply(x, p, group)
    (ga,) = torch.autograd.grad((a * w).sum(), x)
    b = aug.apply_on_device(x, p, group)
    (gb,) = torch.autograd.grad((b * w).sum(), x)
    # the same per-sample ops on the same rows (apply runs them on sub-batches): equal up to rounding
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gb, ga, rtol=1e-6, atol=1e-6)


def test_sample_class_batches_draws_without_replacement_from_each_class(tiny_ds):
    k = tiny_ds.num_classes
    table, valid = class_table([tiny_ds.class_indices(c) for c in range(k)])
    g = make_generator(0)
    seen = set()
    for _ in range(20):
        idx = sample_class_batches(table, valid, 7, g)
        assert idx.shape == (k * 7,)
        for c in range(k):
            block = idx[c * 7:(c + 1) * 7]
            assert (tiny_ds.y_train[block] == c).all()
            assert len(set(block.tolist())) == 7
        seen |= set(idx.tolist())
    assert seen == set(range(len(tiny_ds.y_train)))  # every image of every class gets drawn
    whole = sample_class_batches(table, valid, 20, g)  # a whole class: a permutation of it
    assert sorted(whole[:20].tolist()) == sorted(tiny_ds.class_indices(0).tolist())
    with pytest.raises(ValueError, match="smallest class"):
        sample_class_batches(table, valid, 21, g)


def test_sample_class_batches_ignores_padding_of_smaller_classes():
    table, valid = class_table([torch.tensor([5, 6, 7]), torch.tensor([1, 2, 3, 4, 8, 9])])
    for seed in range(10):
        idx = sample_class_batches(table, valid, 3, make_generator(seed))
        assert sorted(idx[:3].tolist()) == [5, 6, 7]
        assert set(idx[3:].tolist()) <= {1, 2, 3, 4, 8, 9} and len(set(idx[3:].tolist())) == 3


def test_reinit_on_device_has_the_default_init_bounds():
    net = ConvNet(1, 10, (28, 28), width=32)
    reinit_on_device_(net, make_generator(0))
    lib = reinit_(ConvNet(1, 10, (28, 28), width=32), make_generator(0))
    for (name, p), q in zip(net.named_parameters(), lib.parameters()):
        if "features" in name and name.endswith(("1.weight", "1.bias")):  # GroupNorm affine
            assert torch.equal(p, q), name
            continue
        bound = 1.0 / p[0].numel() ** 0.5 if name.endswith("weight") else \
            1.0 / dict(net.named_parameters())[name[:-4] + "weight"][0].numel() ** 0.5
        for t in (p, q):  # both inits draw from U(-bound, bound)
            assert t.abs().max() <= bound and t.abs().max() > 0.8 * bound, name
    again = reinit_on_device_(ConvNet(1, 10, (28, 28), width=32), make_generator(0))
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), again.parameters()))


def test_reinit_on_device_refuses_unknown_layers():
    net = ConvNet(1, 10, (28, 28), width=8, norm="batchnorm")
    assert "BatchNorm2d" in reinit_unsupported(net)
    with pytest.raises(ValueError, match="BatchNorm2d"):
        reinit_on_device_(net, make_generator(0))


def _loop(ds, net, lr=1.0, momentum=0.5, batch_real=5, seed=0, **flags):
    syn = init_synthetic(ds, 2, generator=make_generator(seed), device=ds.x_train.device)
    gen = make_generator(seed, ds.x_train.device)
    loop = DeviceIteration(syn, ds, dm_objective, net, DSA(ds.dsa_strategy), batch_real, lr, momentum, None, gen,
                           torch.zeros_like(syn.images), **flags)
    return syn, loop


def _per_class_dm(net, ds, aug, idx, p, images, labels, batch_real):
    """DM Eq. 2 written class by class: ||mean f(A_c(real_c)) - mean f(A_c(syn_c))||^2 summed over c."""
    loss = 0.0
    for c in range(ds.num_classes):
        real = ds.x_train[idx[c * batch_real:(c + 1) * batch_real]]
        syn_c = images[labels == c]
        row = p.index([c])
        with torch.no_grad():
            f_real = net.embed(aug.apply(real, row, torch.zeros(len(real), dtype=torch.long)))
        f_syn = net.embed(aug.apply(syn_c, row, torch.zeros(len(syn_c), dtype=torch.long)))
        loss = loss + ((f_real.mean(0) - f_syn.mean(0)) ** 2).sum()
    return loss


def test_device_iteration_equals_per_class_dm_and_sgd(tiny_ds):
    net = RandomPool.for_dataset("ConvNet", tiny_ds, width=16, device="cpu").net
    syn, loop = _loop(tiny_ds, net)
    ref = syn.images.detach().clone().requires_grad_(True)
    opt = torch.optim.SGD([ref], lr=1.0, momentum=0.5)
    for _ in range(2):
        idx, p = loop.draw()
        p.op = torch.arange(tiny_ds.num_classes) % len(p.ops)  # several families in one iteration
        terms = loop.update(idx, p)
        loss = _per_class_dm(net, tiny_ds, loop.aug, idx, p, ref, syn.labels, 5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert loop.names == ["loss"]
        torch.testing.assert_close(terms[0], loss.detach(), rtol=1e-5, atol=1e-6)  # class sums reassociate
        torch.testing.assert_close(syn.images.detach(), ref.detach(), rtol=1e-5, atol=1e-6)


class _NoHostReads:
    """Fails on any read of a tensor's value by the host (``item``, ``bool``, ``tolist``, ``cpu``...): on
    CUDA each is a sync that a graph capture refuses; on the CPU this finds them before a GPU does."""

    NAMES = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy", "nonzero", "unique")

    def __enter__(self):
        self.saved = {n: getattr(torch.Tensor, n) for n in self.NAMES}
        for n in self.NAMES:
            setattr(torch.Tensor, n, self._refuse(n))

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(torch.Tensor, n, f)

    @staticmethod
    def _refuse(name):
        def refuse(*a, **k):
            raise AssertionError(f"host read Tensor.{name} inside the step")
        return refuse


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_device_iteration_step_reads_nothing_on_the_host(tiny_ds, monkeypatch, amp):
    net = RandomPool.for_dataset("ConvNet", tiny_ds, width=8, device="cpu").net
    syn, loop = _loop(tiny_ds, net, amp=amp)
    loop.step()  # the first call may set things up
    before = syn.images.detach().clone()
    # as under capture: the losses skip their value checks then (the labels were checked up front)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with _NoHostReads():
        loop.step()
    assert not torch.equal(syn.images.detach(), before)
    with pytest.raises(AssertionError, match="host read"), _NoHostReads():
        loop.aug.apply(syn.images, loop.aug.sample(4, generator=make_generator(0)), syn.labels)  # it does work


def _conv_output_dtypes(net):
    dtypes = []
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    return dtypes


def test_device_iteration_under_bf16_runs_the_network_in_bf16_and_steps_in_float32(tiny_ds, device, deterministic):
    ds = tiny_ds.to(device)
    nets = [RandomPool.for_dataset("ConvNet", ds, width=16, device=device).net for _ in range(2)]
    (syn32, loop32), (syn16, loop16) = _loop(ds, nets[0]), _loop(ds, nets[1], amp="bf16")
    dtypes = _conv_output_dtypes(nets[1])
    for _ in range(2):
        before = syn32.images.detach().clone()
        t32, t16 = loop32.update(*loop32.draw()), loop16.update(*loop16.draw())  # same generator seed: same draws
        assert set(dtypes) == {torch.bfloat16} and syn16.images.dtype == loop16.buf.dtype == torch.float32
        # bfloat16 keeps 8 significant bits (relative rounding 2^-9 per operation): the loss and the step
        # agree with float32 to a few percent, not more
        torch.testing.assert_close(t16, t32, rtol=0.05, atol=0)
        step32, step16 = syn32.images.detach() - before, syn16.images.detach() - before
        assert torch.nn.functional.cosine_similarity(step16.flatten(), step32.flatten(), dim=0) > 0.98
        with torch.no_grad():
            syn16.images.copy_(syn32.images)
            loop16.buf.copy_(loop32.buf)


def test_device_iteration_compiled_channels_last_equals_plain(tiny_ds, device, deterministic):
    if device.type == "cpu" and not compile_available():
        pytest.skip("torch.compile needs a C++ compiler here")
    torch._dynamo.reset()
    ds = tiny_ds.to(device)
    nets = [RandomPool.for_dataset("ConvNet", ds, width=8, device=device).net for _ in range(2)]
    (syn_a, plain), (syn_b, fast) = _loop(ds, nets[0]), _loop(ds, nets[1], compile=True, channels_last=True)
    for _ in range(3):
        plain.step()
        fast.step()
        torch.testing.assert_close(fast.terms, plain.terms, rtol=1e-4, atol=1e-6)  # reassociation only
    torch.testing.assert_close(syn_b.images.detach(), syn_a.images.detach(), rtol=1e-4, atol=1e-5)


def test_distill_graphs_on_cpu_runs_the_device_loop_and_resumes(tiny_ds, tmp_path):
    def run(iterations, checkpoint=None):
        syn = init_synthetic(tiny_ds, 2, generator=make_generator(0), device="cpu")
        pool = RandomPool.for_dataset("ConvNet", tiny_ds, width=8, device="cpu")
        hist = distill(syn, tiny_ds, dm_objective, pool, iterations, batch_real=5, progress=False, graphs=True,
                       checkpoint=checkpoint, checkpoint_every=2, device="cpu")
        return syn.images.detach(), hist

    straight, h_straight = run(5)
    ck = tmp_path / "ck.pt"
    run(2, ck)
    saved = torch.load(ck, weights_only=False)
    assert saved["iteration"] == 2 and "g_device" in saved and "momentum_buffer" in saved["opt"]["state"][0]
    resumed, h_resumed = run(5, ck)
    assert torch.equal(resumed, straight)
    assert h_resumed == h_straight and len(h_straight) == 5 and all(h["loss"] > 0 for h in h_straight)
    eager, _ = (lambda s: (s, distill(s, tiny_ds, dm_objective, RandomPool.for_dataset("ConvNet", tiny_ds, width=8, device="cpu"),
                                       5, batch_real=5, progress=False, graphs=False, device="cpu")))(
        init_synthetic(tiny_ds, 2, generator=make_generator(0), device="cpu"))
    assert not torch.equal(eager.images.detach(), straight)  # its own draws: not the eager loop's


def test_distill_graphs_takes_bf16(tiny_ds):
    syn = init_synthetic(tiny_ds, 2, generator=make_generator(0), device="cpu")
    pool = RandomPool.for_dataset("ConvNet", tiny_ds, width=8, device="cpu")
    dtypes = _conv_output_dtypes(pool.net)
    before = syn.images.detach().clone()
    hist = distill(syn, tiny_ds, dm_objective, pool, 3, batch_real=5, progress=False, graphs=True, amp="bf16",
                   device="cpu")
    assert set(dtypes) == {torch.bfloat16} and syn.images.dtype == torch.float32
    assert len(hist) == 3 and all(h["loss"] > 0 for h in hist) and not torch.equal(syn.images.detach(), before)


@pytest.mark.parametrize("amp, speed_flags, taken", [("off", False, True), ("bf16", False, False),
                                                    ("off", True, False)])
def test_graphs_auto_on_cuda_takes_the_device_loop_only_for_the_float32_configuration(tiny_ds, monkeypatch, amp,
                                                                                      speed_flags, taken):
    import ddkit.methods.distill as distill_module
    from ddkit.methods.distill import _use_graphs

    # the pool is on the CPU here: on CUDA it would be on the run's device, which graphs_unsupported checks
    monkeypatch.setattr(distill_module, "graphs_unsupported", lambda *a: None)
    syn = init_synthetic(tiny_ds, 2, generator=make_generator(0), device="cpu")
    pool = RandomPool.for_dataset("ConvNet", tiny_ds, width=8, device="cpu")
    args = (syn, tiny_ds, dm_objective, pool, 5, "joint", None, None, amp, speed_flags)
    assert _use_graphs("auto", torch.device("cuda"), *args) is taken  # the decision, before any CUDA work
    assert _use_graphs("auto", torch.device("cpu"), *args) is False
    assert _use_graphs(True, torch.device("cpu"), *args) is True  # asked for: the levers run inside the loop


def test_graphs_auto_on_cpu_is_the_eager_loop(tiny_ds):
    out = []
    for graphs in ("auto", False):
        syn = init_synthetic(tiny_ds, 2, generator=make_generator(0), device="cpu")
        pool = RandomPool.for_dataset("ConvNet", tiny_ds, width=8, device="cpu")
        out.append((distill(syn, tiny_ds, dm_objective, pool, 3, batch_real=5, progress=False, graphs=graphs, device="cpu"),
                    syn.images.detach()))
    assert out[0][0] == out[1][0] and torch.equal(out[0][1], out[1][1])


def test_graphs_unsupported_names_the_reason(tiny_ds):
    syn = init_synthetic(tiny_ds, 2, generator=make_generator(0), device="cpu")
    pool = RandomPool.for_dataset("ConvNet", tiny_ds, width=8, device="cpu")
    assert graphs_unsupported(syn, tiny_ds, dm_objective, pool, 5) is None
    assert "per_class" in graphs_unsupported(syn, tiny_ds, dm_objective, pool, 5, image_step="per_class")
    assert "smallest class" in graphs_unsupported(syn, tiny_ds, dm_objective, pool, 21)
    assert "graph_safe" in graphs_unsupported(syn, tiny_ds, lambda b: dm_objective(b), pool, 5)
    queue = IDMQueue("ConvNet", 1, 4, (28, 28), initial_nets=1, width=8, generator=make_generator(0))
    assert "IDMQueue" in graphs_unsupported(syn, tiny_ds, dm_objective, queue, 5)
    assert "fp16" in graphs_unsupported(syn, tiny_ds, dm_objective, pool, 5, amp="fp16")
    assert graphs_unsupported(syn, tiny_ds, dm_objective, pool, 5, amp="bf16") is None
    with pytest.raises(ValueError, match="graphs=True.*image_step"):
        distill(syn, tiny_ds, dm_objective, pool, 1, batch_real=5, progress=False, graphs=True, image_step="per_class", device="cpu")
    with pytest.raises(ValueError, match="graphs=True.*fp16"):
        distill(syn, tiny_ds, dm_objective, pool, 1, batch_real=5, progress=False, graphs=True, amp="fp16", device="cpu")
    with pytest.raises(ValueError, match="graphs='yes'"):
        distill(syn, tiny_ds, dm_objective, pool, 1, batch_real=5, progress=False, graphs="yes", device="cpu")


# --------------------------------------------------------------------------- CUDA only

@pytest.fixture
def deterministic_cuda():
    """cuDNN deterministic, TF32 off: the graph and the eager calls then run the same kernels; the only
    difference left is the order of index_add's atomic additions (class sums), hence the tolerances."""
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
     torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = saved


@pytest.mark.parametrize("flags", [{}, {"amp": "bf16"}, {"compile": True, "channels_last": True}],
                         ids=["float32", "bf16", "compiled"])
def test_graph_replays_equal_eager_calls(device, tiny_ds, deterministic_cuda, flags):
    if device.type != "cuda":
        pytest.skip("CUDA graphs need CUDA")
    ds = tiny_ds.to(device)
    net = RandomPool.for_dataset("ConvNet", ds, device=device, width=16).net
    syn, loop = _loop(ds, net, **flags)
    images0, rng0 = syn.images.detach().clone(), loop.generator.get_state()
    eager = []
    for _ in range(3):
        loop.step()
        eager.append((loop.terms.clone(), [p.clone() for p in net.parameters()], syn.images.detach().clone()))
    rng_eager = loop.generator.get_state()
    with torch.no_grad():
        syn.images.copy_(images0)
        loop.buf.zero_()
    loop.generator.set_state(rng0)
    graph = capture(loop.step, loop.generator, [syn.images, loop.buf])
    # bf16: an image differing in its last float32 bits (the class sums' order) can round to the
    # neighbouring bfloat16 value (2^-8 relative) in the next iteration's casts
    tol = dict(rtol=1e-3, atol=1e-4) if flags.get("amp") == "bf16" else dict(rtol=1e-4, atol=1e-5)
    for terms, weights, images in eager:
        graph.replay()
        assert all(torch.equal(a, b) for a, b in zip(net.parameters(), weights))  # same draws, bitwise
        torch.testing.assert_close(loop.terms, terms, **tol)
        torch.testing.assert_close(syn.images.detach(), images, **tol)
    assert torch.equal(loop.generator.get_state(), rng_eager)


def test_captured_distill_resumes(device, tiny_ds, tmp_path, deterministic_cuda):
    if device.type != "cuda":
        pytest.skip("CUDA graphs need CUDA")

    def run(iterations, checkpoint=None):
        syn = init_synthetic(tiny_ds, 2, generator=make_generator(0), device=device)
        pool = RandomPool.for_dataset("ConvNet", tiny_ds, device=device, width=8)
        hist = distill(syn, tiny_ds, dm_objective, pool, iterations, batch_real=5, progress=False, device=device,
                       checkpoint=checkpoint, checkpoint_every=2)
        return syn.images.detach(), hist

    straight, h_straight = run(5)
    ck = tmp_path / "ck.pt"
    run(2, ck)
    assert "g_device" in torch.load(ck, weights_only=False)  # "auto" took the captured path
    resumed, h_resumed = run(5, ck)
    torch.testing.assert_close(resumed, straight, rtol=1e-4, atol=1e-5)
    assert len(h_resumed) == 5
    assert [h["loss"] for h in h_resumed] == pytest.approx([h["loss"] for h in h_straight], rel=1e-4)
