"""The PyTorch side: the one torch mirror of a spec and the independent references of the projection
(``reference``), and training (``train``: ``train(spec=...)``, one loop for every spec; the architecture
variants of the paper's Fig. 6 are specs and options trained by it, ``variants``). torch is imported
inside the functions that need it, never by ``import zfcore``."""
from zfcore.torch import reference, train, variants

__all__ = ["reference", "train", "variants"]
