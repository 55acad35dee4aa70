"""ddkit: a notebook-first research kit for dataset distillation.

Process-wide settings: ``import ddkit`` changes exactly one, here and nowhere else. glibc's
``malloc`` is told to keep freed memory for reuse instead of unmapping it
(:func:`ddkit.core.utils.keep_freed_memory`, the reason and the measurement are in its docstring);
``DDKIT_KEEP_FREED_MEMORY=0`` in the environment before the import turns it off, and
:data:`MALLOC_TUNED` says whether it was applied (never off glibc). Everything else that touches
global state (seeding the global RNGs, a sweep's thread counts, dynamo's recompile limit for
compiled models) happens only inside the function that does it, when it is called.
"""
from .core.utils import keep_freed_memory as _keep_freed_memory

__version__ = "0.1.0"
#: whether glibc was told to keep freed memory (see the module docstring)
MALLOC_TUNED = _keep_freed_memory()
