"""What the loss is: layers with their weights, alpha/beta/TV and the normalizations.

Plain values (no JAX), so a config is checked before JAX loads; :mod:`nst.losses` has the
formulas and :mod:`nst.engine` the loss built from this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LossSpec:
    """Layers with their weights, α/β/TV weights and normalizations (see :mod:`nst.losses`)."""

    content_layers: Mapping[str, float] = field(default_factory=lambda: {"relu4_2": 1.0})
    style_layers: Mapping[str, float] = field(
        default_factory=lambda: {f"relu{b}_1": 0.2 for b in range(1, 6)}
    )
    alpha: float = 1.0
    beta: float = 1e3
    tv: float = 0.0
    gram_norm: str = "mean"
    content_norm: str = "mean"
    style: str = "gram"  # loss.style: gram, or mean_cov (see nst.losses.mean_cov_loss)
    balance: str = "none"  # or "grad": see nst.engine.balance_scale

    def weights(self) -> dict[str, Any]:
        """The scalar weights as a pytree of float32 arrays: jit arguments, not constants."""
        f = np.float32
        return {
            "alpha": f(self.alpha),
            "beta": f(self.beta),
            "tv": f(self.tv),
            "content": {k: f(v) for k, v in self.content_layers.items()},
            "style": {k: f(v) for k, v in self.style_layers.items()},
        }

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys([*self.content_layers, *self.style_layers]))
