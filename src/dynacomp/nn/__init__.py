"""Building blocks shared by several systems, with no system logic in them."""

from dynacomp.nn.vq import VectorQuantizer, VQConfig

__all__ = ["VQConfig", "VectorQuantizer"]
