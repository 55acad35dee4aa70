"""ddkit.runs.widgets: build the viewers, drive their sliders, check the drawn figure's data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ddkit.runs.widgets import GeneratorViewer, SyntheticSetViewer, soft_label_probs, to_display

MEAN, STD = 0.5, 0.25


class DS:  # the bits of ImageDataset the viewer uses
    num_classes = 3
    classes = ["zero", "one", "two"]
    mean, std = (MEAN,), (STD,)


def synset(n_per_class=(2, 3, 1)):
    x, y = [], []
    for c, n in enumerate(n_per_class):
        for j in range(n):
            x.append(torch.full((1, 4, 5), float(c * 10 + j)) / 40.0 - 0.3)
            y.append(c)
    return torch.stack(x), torch.tensor(y)


def shown(viewer, ax=0):
    return np.asarray(viewer.figure.axes[ax].images[0].get_array())


def tile(viewer, j, ax=0):
    """Image ``j`` of the displayed class, cut from the drawn grid."""
    h, w = viewer.x.shape[2:]
    cols = viewer.grid_shape(len(viewer.members(viewer.class_slider.value)))[1]
    r, q = divmod(j, cols)
    return shown(viewer, ax)[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w]


def test_synset_viewer_shows_the_whole_class_as_a_grid():
    x, y = synset()
    v = SyntheticSetViewer(x, y, dataset=DS())
    assert v.class_slider.max == 2 and v.image_slider.max == 1
    assert shown(v).shape == (4, 5 * 2 + 1), "class 0: two 4x5 images side by side, 1-pixel gap"
    for j in range(2):
        np.testing.assert_allclose(tile(v, j), np.clip(x[j, 0].numpy() * STD + MEAN, 0, 1), atol=1e-6)
    png = v.image.value
    assert png[:4] == b"\x89PNG"
    v.class_slider.value = 1
    assert v.image_slider.max == 2 and v.image_slider.value == 0 and v.index == 2
    for j in range(3):
        np.testing.assert_allclose(tile(v, j), np.clip(x[2 + j, 0].numpy() * STD + MEAN, 0, 1), atol=1e-6)
    v.image_slider.value = 2
    assert v.index == 4 and "framed: image 3" in v.info.value and "3 image(s)" in v.info.value
    frame = v.figure.axes[0].patches[0]
    assert frame.get_xy() == (2 * 6 - 0.5, -0.5), "the selected image is framed in the grid"
    assert v.image.value != png and "one" in v.info.value
    v.class_slider.value = 2  # one image: the slider range shrinks, the value resets
    assert v.image_slider.max == 0 and v.index == 5
    assert len(v.figure.axes) == 1, "no soft-label panel for hard labels"


def test_synset_viewer_wraps_rows_and_stays_small():
    x, y = synset((23, 1, 1))
    v = SyntheticSetViewer(x, y, dataset=DS(), columns=10, tile=0.5)
    assert v.grid_shape(23) == (3, 10) and shown(v).shape == (3 * 5 - 1, 10 * 6 - 1)
    np.testing.assert_allclose(tile(v, 22), np.clip(x[22, 0].numpy() * STD + MEAN, 0, 1), atol=1e-6)
    w, h = v.figure.get_size_inches()
    assert w <= 10 * 0.5 + 0.1 and h <= 3 * 0.5 + 0.6, "about half an inch per image, not the cell width"
    with pytest.raises(ValueError, match="columns=0"):
        SyntheticSetViewer(x, y, columns=0)


def test_synset_viewer_soft_labels_beside_the_grid_and_rgb():
    x = torch.rand(4, 3, 6, 6)
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 4.0, 0.0]])
    v = SyntheticSetViewer(x, logits, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
    assert v.soft and v.class_slider.max == 2
    v.class_slider.value = 1
    v.image_slider.value = 1  # sample 3 (argmax 1)
    assert v.index == 3
    np.testing.assert_allclose(shown(v, 1), torch.softmax(logits[[1, 3]], 1).numpy(), atol=1e-6)
    assert shown(v).shape == (6, 13, 3)
    np.testing.assert_allclose(tile(v, 1), x[3].permute(1, 2, 0).numpy(), atol=1e-6)
    assert "max p = " in v.info.value
    # browsing by given classes (e.g. EAD's init classes), probabilities kept as they are
    probs = torch.tensor([[0.2, 0.8, 0.0]] * 4)
    v2 = SyntheticSetViewer(x, probs, classes=[0, 0, 2, 2], class_names=["a", "b", "c"])
    assert v2.image_slider.max == 1
    np.testing.assert_allclose(shown(v2, 1), probs[:2].numpy())


def test_synset_viewer_rejects_bad_shapes():
    with pytest.raises(ValueError, match="N, C, H, W"):
        SyntheticSetViewer(torch.zeros(3, 4, 4), torch.zeros(3))
    with pytest.raises(ValueError, match="labels"):
        SyntheticSetViewer(torch.zeros(3, 1, 4, 4), torch.zeros(2))


class ToyGen(torch.nn.Module):
    """generate(labels, z=None): image value = class + first latent, normalised space."""
    num_classes, z_dim = 4, 3

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.calls = []

    def generate(self, labels, z=None):
        self.calls.append(self.training)
        if z is None:
            z = torch.randn(len(labels), self.z_dim)
        return (labels.float() + z[:, 0])[:, None, None, None].expand(-1, 1, 2, 2) * self.w


def test_generator_viewer_redraws_per_slider():
    gen = ToyGen()
    v = GeneratorViewer(gen, mean=[0.0], std=[1.0], ipc=2)
    z = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(v.samples[:, 0, 0, 0].numpy(), (0 + z[:, 0]).numpy(), atol=1e-6)
    v.class_slider.value = 2
    v.ipc_slider.value = 3
    v.seed_slider.value = 5
    z = torch.randn(3, 3, generator=torch.Generator().manual_seed(5))
    expected = 2 + z[:, 0]
    np.testing.assert_allclose(v.samples[:, 0, 0, 0].numpy(), expected.numpy(), atol=1e-6)
    grid = shown(v)
    assert grid.shape == (2, 3 * 2 + 2)  # 3 tiles of 2x2, 1-pixel gaps
    np.testing.assert_allclose(grid[0, [0, 3, 6]], np.clip(expected.numpy(), 0, 1), atol=1e-6)
    assert gen.training and not any(gen.calls), "sampled in eval mode, mode restored"
    assert "seed 5" in v.info.value


def test_generator_viewer_with_a_callable_and_real_generator():
    f = lambda labels: torch.randn(len(labels), 1, 3, 3) + labels[:, None, None, None]  # noqa: E731
    v = GeneratorViewer(f, num_classes=2, ipc=1, seed=3)
    a = v.samples.clone()
    v.seed_slider.value = 4
    v.seed_slider.value = 3
    torch.testing.assert_close(v.samples, a)  # the seed makes it reproducible
    with pytest.raises(ValueError, match="num_classes"):
        GeneratorViewer(f)
    from ddkit.methods.gan_nets import ConditionalGenerator

    g = ConditionalGenerator(num_classes=10, channels=1, im_size=(28, 28), z_dim=8, width=8,
                             mean=[0.1307], std=[0.3081])
    v = GeneratorViewer(g, ipc=3)
    assert v.samples.shape == (3, 1, 28, 28) and v.latent_dim == 8
    pixels = v.samples * 0.3081 + 0.1307  # generator mean/std picked up for display
    np.testing.assert_allclose(shown(v)[:28, :28], pixels[0, 0].clamp(0, 1).numpy(), atol=1e-5)


def test_helpers():
    a = to_display(torch.tensor([[[[0.0, 2.0]]]]))  # min-max when no normalisation is known
    np.testing.assert_allclose(a, [[[0.0, 1.0]]])
    np.testing.assert_allclose(soft_label_probs(np.array([[0.0, 0.0]])), [[0.5, 0.5]])
