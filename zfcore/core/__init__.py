"""The deconvnet itself, numpy only, read top to bottom.

- ``ops``: each forward operation next to its deconvnet inverse and its naive loop twin
  (conv2d / conv_transpose2d, relu / unrelu, max_pool2d / max_unpool2d, linear / linear_transpose);
- ``layers``: a forward op and its inverse as one object, the three ReLU rules (``RULES``);
- ``network``: named layers; ``Network.forward`` returns a ``Record`` of the pass (activations, switches);
- ``projection``: a recorded activation walked back to pixels, on whole maps or through its receptive
  field only; ``receptive``: receptive-field arithmetic.

The fast kernels (``_kernels``) and the argument checks of the ops (``_checks``) are private.
"""
from zfcore.core import layers, ops
from zfcore.core.layers import RULES
from zfcore.core.network import Network, ReceptiveField, Record

__all__ = ["ops", "layers", "RULES", "Network", "ReceptiveField", "Record"]
