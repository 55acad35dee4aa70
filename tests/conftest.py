import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read by cuBLAS before its first matmul


@pytest.fixture(scope="session")
def mnist5k():
    from ddkit.data import load_dataset
    return load_dataset("mnist5k")


@pytest.fixture(scope="session")
def tiny_ds(mnist5k):
    """A 4-class, 20-per-class slice of mnist5k for fast loop tests."""
    from ddkit.data import ImageDataset
    keep = torch.cat([mnist5k.class_indices(c)[:20] for c in range(4)])
    keep_t = torch.cat([torch.nonzero(mnist5k.y_test == c).squeeze(1)[:20] for c in range(4)])
    return ImageDataset("mnist5k", mnist5k.x_train[keep], mnist5k.y_train[keep], mnist5k.x_test[keep_t],
                        mnist5k.y_test[keep_t], mnist5k.mean, mnist5k.std, mnist5k.classes[:4],
                        mnist5k.dsa_strategy)


@pytest.fixture(params=[d for d in os.environ.get("DDKIT_TEST_DEVICES", "cpu").split(",") if d])
def device(request):
    """The compute device of a device-taking test: ``cpu`` by default; ``DDKIT_TEST_DEVICES=cpu,cuda``
    (``make gpu-check`` sets ``cuda``) runs each such test once per listed device (ids ``[cpu]``, ``[cuda]``)."""
    return torch.device(request.param)


@pytest.fixture
def deterministic():
    """For a test that claims equal numbers on every device: ``ddkit.core.utils.deterministic()`` around it
    (deterministic algorithms, cuDNN deterministic without autotuning, TF32 off for matmuls and
    convolutions, the cuBLAS workspace setting), the previous settings restored after. The CPU's
    kernels repeat anyway; on CUDA this removes TF32 rounding (~1e-3 relative) and run-to-run
    kernel choices, so exact comparisons mean the same there."""
    from ddkit.core.utils import deterministic as settings

    with settings():
        yield


@pytest.fixture(autouse=True)
def _deterministic_on_cuda(request):
    """On a machine with CUDA every test runs under :func:`deterministic`: an exact comparison in any
    test file means there what it means on the CPU (whose suite this leaves untouched)."""
    if torch.cuda.is_available():
        request.getfixturevalue("deterministic")


@pytest.fixture(autouse=True)
def _default_device(request, monkeypatch):
    """``device=None`` / ``"auto"`` inside a test means the test's own device: the ``device`` fixture's
    for a device-taking test (``DDKIT_TEST_DEVICES``), the CPU for every other test. So the suite
    computes on a GPU machine what it computes on the CPU, and only the device-taking tests move to
    CUDA (``$DDKIT_DEVICE``, :func:`ddkit.core.utils.resolve_device`)."""
    dev = request.getfixturevalue("device") if "device" in request.fixturenames else torch.device("cpu")
    monkeypatch.setenv("DDKIT_DEVICE", str(dev))
