"""Pictures: image grids of synthetic sets (:func:`tile` is the one grid layout), loss curves."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch


def display_images(x: torch.Tensor, dataset=None) -> np.ndarray:
    """(N, C, H, W) images in the dataset's normalised space -> (N, H, W) or (N, H, W, 3) floats in
    [0, 1] for ``imshow`` (``dataset.denormalize``; ``dataset=None``: already in [0, 1])."""
    x = x.detach().float().cpu()
    a = (dataset.denormalize(x) if dataset is not None else x).clamp(0, 1).numpy()
    return a[:, 0] if a.shape[1] == 1 else np.transpose(a, (0, 2, 3, 1))


def tile(images: np.ndarray, cols: int, rows: int | None = None, pad: int = 1) -> np.ndarray:
    """The one image-grid layout of ddkit: (n, H, W[, 3]) display images -> one image of ``rows`` x
    ``cols`` cells filled row by row (``rows`` default: as many as needed), ``pad`` white pixels
    between cells, empty cells white."""
    n, h, w = images.shape[:3]
    rows = rows or max(1, -(-n // cols))
    grid = np.ones((rows * (h + pad) - pad, cols * (w + pad) - pad) + images.shape[3:], dtype=np.float32)
    for i in range(min(n, rows * cols)):
        r, c = divmod(i, cols)
        grid[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = images[i]
    return grid


def class_grid(x: torch.Tensor, y: torch.Tensor, dataset, per_class: int | None = None,
               classes_as: str = "rows") -> np.ndarray:
    """A synthetic set as one picture: the first ``per_class`` images of every class (default: the
    largest class's count), one class per row (``classes_as="rows"``) or per column ("columns": row
    j holds every class's j-th image). ``y``: hard (N,) or soft (N, K) labels (soft: argmax)."""
    if classes_as not in ("rows", "columns"):
        raise ValueError(f"classes_as={classes_as!r}; expected 'rows' or 'columns'")
    imgs = display_images(x, dataset)
    y = (y.argmax(1) if y.dim() == 2 else y).cpu()
    members = [torch.nonzero(y == c).flatten() for c in range(dataset.num_classes)]
    n = per_class or max(1, max(len(m) for m in members))
    blank = np.ones_like(imgs[:1])
    cells = [[imgs[m[j]][None] if j < len(m) else blank for j in range(n)] for m in members]
    if classes_as == "columns":
        cells = [list(col) for col in zip(*cells)]
    return tile(np.concatenate([c for row in cells for c in row]), cols=len(cells[0]))


def image_grid(x: torch.Tensor, y: torch.Tensor, dataset, per_class: int | None = None, title: str = "",
               max_per_class: int = 10, scale: float = 0.9):
    """One row per class (class name at the left), up to ``max_per_class`` images each, denormalised
    (each row a :func:`tile`). ``y`` may be hard (N,) or soft (N, K) labels (soft: argmax)."""
    imgs = display_images(x, dataset)
    y = (y.argmax(1) if y.dim() == 2 else y).cpu()
    k = dataset.num_classes
    rows = [torch.nonzero(y == c).squeeze(1)[:max_per_class] for c in range(k)]
    cols = per_class or max(1, max(len(r) for r in rows))
    fig, axes = plt.subplots(k, 1, figsize=(cols * scale, k * scale), squeeze=False)
    for c, idx in enumerate(rows):
        ax = axes[c][0]
        row = imgs[idx[:cols].numpy()] if len(idx) else np.ones_like(imgs[:1])
        ax.imshow(tile(row, cols=cols, rows=1), cmap="gray" if row.ndim == 3 else None, vmin=0, vmax=1)
        ax.set_xticks([]), ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        ax.set_ylabel(str(dataset.classes[c])[:10], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _moving_average(v: np.ndarray, smooth: int) -> np.ndarray:
    """Mean over windows of ``smooth`` points (only full windows); unchanged if too short."""
    if smooth > 1 and len(v) >= smooth:
        return np.convolve(v, np.ones(smooth) / smooth, mode="valid")
    return v


def term_panels(histories: dict, keys, title="", smooth: int = 1):
    """Loss curves on a linear scale, one subplot per term (``keys``), one line per named history
    (a list of dicts; entries without the term are skipped), e.g. a GAN's critic and generator
    losses, which change sign."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, hist in histories.items():
            vals = np.array([h[key] for h in hist if key in h], dtype=float)
            if len(vals):
                ax.plot(_moving_average(vals, smooth), label=name)
        ax.set_title(f"{title} {key}".strip())
        ax.set_xlabel("iteration")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
