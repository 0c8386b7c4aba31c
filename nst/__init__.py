"""nst: config-driven optimization-based neural style transfer (Gatys et al., CVPR 2016) in JAX."""

__version__ = "0.1.0"
