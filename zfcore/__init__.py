"""zfcore: the deconvnet of Zeiler & Fergus (ECCV 2014), from scratch in numpy.

    import zfcore as zf
    net = zf.models.load_model()                  # the embedded Fashion-MNIST model, offline
    images, labels = zf.data.load_dataset("test")
    rec = net.forward(images[:1])                 # a record of this pass: activations and switches
    img = rec.project("conv5", feature=17)        # strongest activation of feature 17 -> pixels

Subpackages, bottom up: ``core`` (ops, layers, network, projection; numpy only), ``models`` (specs and
weight files), ``data`` (datasets, images, sources), ``analysis`` (top-k, occlusion, studies,
explanations, threads and Dask), ``viz`` (figures, the explorer), ``torch`` (the PyTorch mirror,
references and training; torch imported lazily), ``cli`` (the command line, not imported here) and the
optional ``comparison`` with huybery/VisualizingCNN (not imported here).
"""
__version__ = "0.1.0"

from zfcore import errors  # noqa: E402
from zfcore import analysis, core, data, models, torch, viz  # noqa: E402
from zfcore.core import RULES, Network, ReceptiveField, Record  # noqa: E402
from zfcore.errors import ZfcoreError  # noqa: E402
from zfcore.models import build_model, load_model  # noqa: E402

__all__ = ["__version__", "errors", "core", "models", "data", "analysis", "viz", "torch", "RULES", "Network",
           "ReceptiveField", "Record", "ZfcoreError", "build_model", "load_model"]
