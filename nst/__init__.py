"""nst: config-driven optimization-based neural style transfer (Gatys et al., CVPR 2016) in JAX.

    import nst
    r = nst.stylize("photo.jpg", "sample:ihc", size=256, steps=300)
    r.image, r.history, r.config

``nst.load_config`` composes the same configs as the ``nst`` command; ``nst.register_backbone``
and ``nst.register_tracker`` add extension points. Heavy modules load on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "stylize": "nst.api",
    "load_config": "nst.api",
    "Result": "nst.api",
    "RunSpec": "nst.spec",
    "register_backbone": "nst.backbones",
    "register_tracker": "nst.tracking",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nst' has no attribute {name!r}")
