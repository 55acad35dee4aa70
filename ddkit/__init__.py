"""ddkit: a notebook-first research kit for dataset distillation."""
from .utils import keep_freed_memory as _keep_freed_memory

__version__ = "0.1.0"
#: whether glibc was told to keep freed memory (see :func:`ddkit.utils.keep_freed_memory`)
MALLOC_TUNED = _keep_freed_memory()
