"""ipywidgets viewers for synthetic sets and generators.

Both viewers draw with a plain ``matplotlib.figure.Figure`` (no pyplot, no display
needed) into an ``ipywidgets.Image``; ``viewer.figure`` is the last rendered figure, so
tests (and curious users) can read the drawn data without a browser::

    v = SyntheticSetViewer(x, y, dataset=ds)      # y: (N,) ints or (N, K) soft labels
    v.class_slider.value = 3; v.image_slider.value = 1
    v.figure.axes[0].images[0].get_array()         # the class's images as one grid (v.mosaic(3))
    v                                              # in a notebook: shows the widget

    g = GeneratorViewer(generator, num_classes=10) # .generate(labels, z=None) or a callable
    g.seed_slider.value = 7                        # redraws samples live

``SyntheticSetViewer.from_file("results/iid/<run>/synset.pt", dataset=ds)`` opens a saved
synthetic set (``ddkit.runs.results.save_synset``).
"""
from __future__ import annotations

import io
import inspect
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["SyntheticSetViewer", "GeneratorViewer", "to_display", "soft_label_probs"]


def _np(x) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().float().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x, dtype=np.float32)


def _denormalizer(denormalize=None, dataset=None, mean=None, std=None) -> Callable[[np.ndarray], np.ndarray] | None:
    """A function (N, C, H, W) array -> [0, 1] array, or None (min-max per image)."""
    if callable(denormalize):
        def f(a):
            import torch

            return _np(denormalize(torch.as_tensor(a)))
        return f
    if dataset is not None and hasattr(dataset, "mean") and hasattr(dataset, "std"):
        mean, std = dataset.mean, dataset.std
    if mean is not None and std is not None:
        m = np.asarray(_np(mean), dtype=np.float32).reshape(1, -1, 1, 1)
        s = np.asarray(_np(std), dtype=np.float32).reshape(1, -1, 1, 1)
        return lambda a: np.clip(a * s + m, 0.0, 1.0)
    return None


def to_display(x, denorm: Callable | None = None) -> np.ndarray:
    """(N, C, H, W) images -> (N, H, W) or (N, H, W, 3) floats in [0, 1] for ``imshow``."""
    a = _np(x)
    if a.ndim == 3:
        a = a[None]
    if denorm is not None:
        a = denorm(a)
    else:  # min-max per image
        lo = a.reshape(len(a), -1).min(1).reshape(-1, 1, 1, 1)
        hi = a.reshape(len(a), -1).max(1).reshape(-1, 1, 1, 1)
        a = (a - lo) / np.maximum(hi - lo, 1e-8)
    a = np.clip(a, 0.0, 1.0)
    return a[:, 0] if a.shape[1] == 1 else np.transpose(a, (0, 2, 3, 1))


def soft_label_probs(y) -> np.ndarray:
    """(N, K) soft labels -> probabilities (rows already on the simplex are kept, others are
    treated as logits and soft-maxed)."""
    a = _np(y).astype(np.float64)
    if (a >= -1e-6).all() and np.allclose(a.sum(1), 1.0, atol=1e-3):
        return a
    a = a - a.max(1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(1, keepdims=True)


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


class _Viewer:
    widget: Any
    figure: Any = None

    def _show(self, fig) -> None:
        self.figure = fig
        self.image.value = _png(fig)

    def _repr_mimebundle_(self, **kwargs):  # display(viewer) shows the widget
        return self.widget._repr_mimebundle_(**kwargs)


class SyntheticSetViewer(_Viewer):
    """Browse a synthetic set class by class: every image of the selected class at once, as a grid.

    ``x``: (N, C, H, W) images in the dataset's normalised space; ``y``: (N,) int labels
    or (N, K) soft labels (then a heat map of the class's soft labels, one row per image in
    grid order, is drawn beside the grid). ``classes``: per-sample class used for browsing
    (default: ``y`` or its argmax). The ``image`` slider picks one image of the class: it is
    framed in the grid (and its soft-label row), and the text line gives its index and label.
    Display: ``denormalize`` (callable), else ``dataset.mean/std`` (or ``mean``/``std``), else
    min-max per image. ``columns``: images per grid row; ``tile``: inches per image.
    """

    def __init__(self, x, y, dataset=None, classes=None, class_names: Sequence[str] | None = None,
                 denormalize: Callable | None = None, mean=None, std=None, columns: int = 10,
                 tile: float = 0.6):
        import ipywidgets as W

        self.x = _np(x)
        if self.x.ndim != 4:
            raise ValueError(f"x must be (N, C, H, W), got shape {self.x.shape}")
        y_np = _np(y)
        self.soft = y_np.ndim == 2
        if len(y_np) != len(self.x):
            raise ValueError(f"x has {len(self.x)} images but y has {len(y_np)} labels")
        if columns < 1 or tile <= 0:
            raise ValueError(f"columns={columns} must be >= 1 and tile={tile} > 0 (inches per image)")
        self.probs = soft_label_probs(y_np) if self.soft else None
        if classes is not None:
            self.classes = _np(classes).astype(int)
        else:
            self.classes = self.probs.argmax(1) if self.soft else y_np.astype(int)
        k = self.probs.shape[1] if self.soft else int(self.classes.max()) + 1
        if dataset is not None and getattr(dataset, "num_classes", None):
            k = max(k, int(dataset.num_classes))
        self.num_classes = k
        names = class_names or (getattr(dataset, "classes", None) if dataset is not None else None)
        self.class_names = [str(c) for c in names] if names is not None and len(names) >= k else [str(i) for i in range(k)]
        self.denorm = _denormalizer(denormalize, dataset, mean, std)
        self.columns, self.tile = int(columns), float(tile)
        self.class_slider = W.IntSlider(value=0, min=0, max=max(k - 1, 0), description="class",
                                        continuous_update=False)
        self.image_slider = W.IntSlider(value=0, min=0, max=max(len(self.members(0)) - 1, 0),
                                        description="image", continuous_update=False)
        self.info = W.HTML()
        self.image = W.Image(format="png")
        self.widget = W.VBox([W.HBox([self.class_slider, self.image_slider]), self.info, self.image])
        self.class_slider.observe(self._on_class, names="value")
        self._updating = False
        self.image_slider.observe(lambda _: None if self._updating else self.render(), names="value")
        self.render()

    @classmethod
    def from_file(cls, path, dataset=None, **kw) -> "SyntheticSetViewer":
        """Open a ``synset.pt`` written by ``ddkit.runs.results.save_synset``."""
        from ddkit.runs.results import load_synset

        x, y, meta = load_synset(path)
        classes = kw.pop("classes", None)
        if classes is None and y.dim() == 2 and meta.get("init_classes") is not None:
            classes = meta["init_classes"]
        return cls(x, y, dataset=dataset, classes=classes, **kw)

    def members(self, c: int) -> np.ndarray:
        """Indices of the images of class ``c``."""
        return np.flatnonzero(self.classes == c)

    @property
    def index(self) -> int | None:
        """Index into ``x`` of the selected image (None when the class is empty)."""
        m = self.members(self.class_slider.value)
        return int(m[min(self.image_slider.value, len(m) - 1)]) if len(m) else None

    def grid_shape(self, n: int) -> tuple[int, int]:
        """(rows, columns) of the grid of ``n`` images."""
        cols = max(1, min(self.columns, n))
        return -(-n // cols), cols

    def mosaic(self, c: int) -> np.ndarray:
        """The class's images tiled row by row (1-pixel white gaps): (rows*(H+1)-1, cols*(W+1)-1[, 3])."""
        tiles = to_display(self.x[self.members(c)], self.denorm)
        rows, cols = self.grid_shape(len(tiles))
        h, w = tiles.shape[1:3]
        out = np.ones((rows * (h + 1) - 1, cols * (w + 1) - 1, *tiles.shape[3:]), dtype=np.float32)
        for j, t in enumerate(tiles):
            r, q = divmod(j, cols)
            out[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w] = t
        return out

    def _on_class(self, _change) -> None:
        n = len(self.members(self.class_slider.value))
        self._updating = True
        try:
            self.image_slider.value = 0
            self.image_slider.max = max(n - 1, 0)
        finally:
            self._updating = False
        self.render()

    def render(self):
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle

        c = self.class_slider.value
        members = self.members(c)
        name = self.class_names[c]
        if not len(members):
            fig = Figure(figsize=(3.0, 1.0))
            ax = fig.subplots()
            ax.text(0.5, 0.5, f"no images of class {name}", ha="center", va="center")
            ax.axis("off")
            self.info.value = f"class {c} ({name}): no images"
            self._show(fig)
            return fig
        rows, cols = self.grid_shape(len(members))
        grid_w, grid_h = max(cols * self.tile, 1.2), max(rows * self.tile, 1.2)
        soft_w = 0.25 * self.num_classes + 1.0 if self.soft else 0.0
        fig = Figure(figsize=(grid_w + soft_w, grid_h + 0.5))
        axes = fig.subplots(1, 2, width_ratios=[grid_w, soft_w], squeeze=False)[0] if self.soft \
            else fig.subplots(1, 1, squeeze=False)[0]
        img = self.mosaic(c)
        ax = axes[0]
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        h, w = self.x.shape[2:]
        r, q = divmod(self.image_slider.value, cols)
        ax.add_patch(Rectangle((q * (w + 1) - 0.5, r * (h + 1) - 0.5), w, h, fill=False, edgecolor="tab:red", lw=1.5))
        ax.set_title(f"class {name}: {len(members)} image(s)", fontsize=9)
        ax.axis("off")
        text = f"class {c} ({name}): {len(members)} image(s); framed: image {self.image_slider.value + 1} " \
               f"(index {self.index})"
        if self.soft:
            self._soft_panel(axes[1], members)
            p = self.probs[self.index]
            text += f"; its soft label max p = {p.max():.2f} ({self.class_names[int(p.argmax())]})"
        fig.tight_layout()
        self.info.value = text
        self._show(fig)
        return fig

    def _soft_panel(self, ax, members: np.ndarray) -> None:
        """Heat map of the soft labels of ``members`` (rows in grid order), the selected row framed."""
        from matplotlib.patches import Rectangle

        p = self.probs[members]
        ax.imshow(p, cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_xticks(np.arange(p.shape[1]))
        ax.set_xticklabels(self.class_names[: p.shape[1]], rotation=90 if p.shape[1] > 10 else 0, fontsize=7)
        step = max(1, len(p) // 10)
        ax.set_yticks(np.arange(0, len(p), step))
        ax.set_yticklabels([str(i + 1) for i in range(0, len(p), step)], fontsize=7)
        ax.add_patch(Rectangle((-0.5, self.image_slider.value - 0.5), p.shape[1], 1, fill=False,
                               edgecolor="tab:red", lw=1.5))
        ax.set_title("soft labels (row = image)", fontsize=9)


class GeneratorViewer(_Viewer):
    """Redraw a conditional generator's samples while sliding class, IPC and seed.

    ``generator``: an object with ``generate(labels, z=None)`` (e.g.
    ``ddkit.methods.gan_nets.ConditionalGenerator``) or a callable ``f(labels, z)`` /
    ``f(labels)``, returning (n, C, H, W) images in the normalised space. Latents: when
    ``latent_dim`` is known (argument, or the generator's ``z_dim``/``latent_dim``/``nz``)
    ``z = randn(ipc, latent_dim)`` from a CPU ``torch.Generator`` seeded with the seed
    slider; otherwise the global RNG is seeded around the call.
    """

    def __init__(self, generator, num_classes: int | None = None, latent_dim: int | None = None,
                 dataset=None, denormalize: Callable | None = None, mean=None, std=None, ipc: int = 4,
                 max_ipc: int = 20, seed: int = 0, max_seed: int = 999,
                 class_names: Sequence[str] | None = None, device=None, columns: int = 10):
        import ipywidgets as W

        self.generator = generator
        k = num_classes or getattr(generator, "num_classes", None) or getattr(dataset, "num_classes", None)
        if not k:
            raise ValueError("num_classes is needed (the generator has no num_classes attribute)")
        self.num_classes = int(k)
        self.latent_dim = latent_dim or next(
            (int(getattr(generator, a)) for a in ("z_dim", "latent_dim", "nz") if getattr(generator, a, None)), None)
        if denormalize is None and dataset is None and mean is None and _is_tensor(getattr(generator, "mean", None)):
            mean, std = generator.mean.flatten(), generator.std.flatten()
        self.denorm = _denormalizer(denormalize, dataset, mean, std)
        names = class_names or (getattr(dataset, "classes", None) if dataset is not None else None)
        self.class_names = [str(c) for c in names] if names is not None and len(names) >= k else [str(i) for i in range(k)]
        self.device = device
        self.columns = columns
        self.class_slider = W.IntSlider(value=0, min=0, max=self.num_classes - 1, description="class",
                                        continuous_update=False)
        self.ipc_slider = W.IntSlider(value=ipc, min=1, max=max(max_ipc, ipc), description="IPC",
                                      continuous_update=False)
        self.seed_slider = W.IntSlider(value=seed, min=0, max=max(max_seed, seed), description="seed",
                                       continuous_update=False)
        self.info = W.HTML()
        self.image = W.Image(format="png")
        self.widget = W.VBox([W.HBox([self.class_slider, self.ipc_slider, self.seed_slider]), self.info, self.image])
        for s in (self.class_slider, self.ipc_slider, self.seed_slider):
            s.observe(lambda _: self.render(), names="value")
        self.samples = None
        self.render()

    def _device(self):
        if self.device is not None:
            return self.device
        params = getattr(self.generator, "parameters", None)
        if callable(params):
            try:
                return next(iter(params())).device
            except StopIteration:
                pass
        return "cpu"

    def draw(self, c: int, ipc: int, seed: int):
        """(ipc, C, H, W) samples of class ``c`` for ``seed`` (no grad, eval mode)."""
        import torch

        dev = self._device()
        labels = torch.full((ipc,), int(c), dtype=torch.long, device=dev)
        z = None
        if self.latent_dim:
            g = torch.Generator().manual_seed(int(seed))
            z = torch.randn(ipc, self.latent_dim, generator=g).to(dev)
        gen = self.generator
        was_training = getattr(gen, "training", None)
        if hasattr(gen, "eval") and was_training:
            gen.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                if hasattr(gen, "generate"):
                    out = gen.generate(labels, z=z)
                elif z is not None and _accepts_two(gen):
                    out = gen(labels, z)
                else:
                    out = gen(labels)
        finally:
            if was_training:
                gen.train(True)
        if isinstance(out, tuple):
            out = out[0]
        return out

    def render(self):
        from matplotlib.figure import Figure

        c, ipc, seed = self.class_slider.value, self.ipc_slider.value, self.seed_slider.value
        self.samples = self.draw(c, ipc, seed)
        imgs = to_display(self.samples, self.denorm)
        cols = min(self.columns, ipc)
        rows = -(-ipc // cols)
        from .viz import tile

        grid = tile(imgs, cols=cols, rows=rows)
        fig = Figure(figsize=(1.1 * cols + 0.4, 1.1 * rows + 0.5))
        ax = fig.subplots()
        ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"class {self.class_names[c]}, IPC {ipc}, seed {seed}", fontsize=9)
        ax.axis("off")
        fig.tight_layout()
        self.info.value = f"{ipc} sample(s) of class {c} ({self.class_names[c]}), seed {seed}"
        self._show(fig)
        return fig


def _is_tensor(x) -> bool:
    try:
        import torch

        return isinstance(x, torch.Tensor)
    except ImportError:  # pragma: no cover
        return False


def _accepts_two(fn) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    params = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
