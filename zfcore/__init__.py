"""zfcore: the deconvnet of Zeiler & Fergus (ECCV 2014), from scratch in numpy.

    import zfcore as zf
    net = zf.models.load_model()                  # the embedded Fashion-MNIST model, offline
    images, labels = zf.data.load_dataset("test")
    net.forward(images[:1])
    rec = net.project("conv5", feature=17)        # strongest activation of feature 17 -> pixels

Submodules are imported on first use (``zf.ops``, ``zf.network`` ...), so ``import zfcore`` is cheap and
the numpy core never pulls in torch or matplotlib.
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = ("ops", "layers", "network", "models", "data", "analysis", "plotting", "widgets",
               "reference", "train", "compare", "weights", "huybery", "sources", "stream", "distributed")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
