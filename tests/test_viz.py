"""ddkit.runs.viz draws what it is given: one panel per class/term, lines per history, no crash on gaps."""
import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from ddkit.data import ImageDataset  # noqa: E402
from ddkit.runs.viz import image_grid, term_panels  # noqa: E402


def _ds():
    x = torch.randn(8, 1, 28, 28)
    y = torch.arange(4).repeat(2)
    return ImageDataset("tiny", x, y, x, y, (0.5,), (0.5,), [str(i) for i in range(4)], "")


def test_image_grid_one_row_per_class():
    ds = _ds()
    fig = image_grid(ds.x_train, ds.y_train, ds, title="t")
    assert len([a for a in fig.axes if a.get_visible()]) >= 4


def test_term_panels_one_panel_per_term_and_skips_missing_terms():
    h = {"a": [{"x": 1.0, "y": -2.0}, {"x": 0.5}], "b": [{"x": 2.0}, {"x": 1.0}]}
    fig = term_panels(h, ["x", "y"], title="stage", smooth=1)
    ax_x, ax_y = fig.axes
    assert [len(line.get_xdata()) for line in ax_x.lines] == [2, 2]
    assert [len(line.get_xdata()) for line in ax_y.lines] == [1]       # only "a" logged y, once
    assert ax_x.get_title() == "stage x"


def test_tile_places_images_row_by_row_with_white_padding():
    import numpy as np
    from ddkit.runs.viz import tile

    imgs = np.stack([np.full((2, 3), v, dtype=np.float32) for v in (0.1, 0.2, 0.3)])
    g = tile(imgs, cols=2, pad=1)
    assert g.shape == (5, 7)
    assert (g[:2, :3] == 0.1).all() and (g[:2, 4:] == 0.2).all() and (g[3:, :3] == 0.3).all()
    assert (g[2] == 1).all() and (g[:, 3] == 1).all() and (g[3:, 4:] == 1).all()   # padding, empty cell


def test_class_grid_rows_are_classes_and_columns_transpose():
    from ddkit.runs.viz import class_grid, display_images

    ds = _ds()
    x = torch.stack([torch.full((1, 28, 28), float(v)) for v in range(8)]) * 0.1 - 0.5   # image i: value i/10
    y = torch.arange(4).repeat(2)                        # class c: images c and c + 4
    rows = class_grid(x, y, ds)
    assert rows.shape == (4 * 29 - 1, 2 * 29 - 1)
    pix = display_images(x, ds)[:, 0, 0]
    assert rows[29 * 2, 29] == pix[6] and rows[0, 0] == pix[0]   # class 2, 2nd image = image 6
    cols = class_grid(x, y, ds, classes_as="columns")
    assert cols.shape == (2 * 29 - 1, 4 * 29 - 1) and cols[29, 29 * 2] == pix[6]


def test_image_grid_draws_one_image_per_class_at_ipc_1():
    ds = _ds()
    fig = image_grid(ds.x_train[:4], ds.y_train[:4], ds)
    assert [a.images[0].get_array().shape for a in fig.axes] == [(28, 28)] * 4
