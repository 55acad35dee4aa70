"""ddkit.viz draws what it is given: one panel per class/term, lines per history, no crash on gaps."""
import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from ddkit.data import ImageDataset  # noqa: E402
from ddkit.viz import image_grid, loss_curves, term_panels  # noqa: E402


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


def test_loss_curves_smooths_and_logs():
    fig = loss_curves({"DM": [{"loss": float(v)} for v in range(1, 11)]}, smooth=5)
    (line,) = fig.axes[0].lines
    assert len(line.get_xdata()) == 6 and fig.axes[0].get_yscale() == "log"
