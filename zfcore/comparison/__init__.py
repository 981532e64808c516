"""Optional: zfcore next to huybery/VisualizingCNN, for the comparison chapter and its benchmark.

``huybery``: a re-creation of that repository's pipeline in PyTorch, with its quirks as options;
``original``: runs the original code from a user's own clone; ``record`` (imported on its own,
``from zfcore.comparison import record``): the original's outputs recorded from such a run with their
provenance (``python -m zfcore.comparison.record``), which a build without a clone reads; ``compare``: the measures and runs that put them side by side, and
``format_table`` (rows as Markdown text). Needs torch (``pip install
'zfcore[notebooks]'``), imported inside the functions that use it: importing this package needs numpy
alone. Nothing else in zfcore imports it. The benchmarks' timing harness is not part of the package
(``benchmarks/harness.py``).
"""
from zfcore.comparison import huybery, original
from zfcore.comparison import compare
from zfcore.comparison.compare import (agreement, bias_effect, bias_effect_images, channel_order,
                                       duplicate_switches, format_table, original_agreement, relative_error,
                                       support, support_mask, switch_flips, zfcore_figure)
from zfcore.comparison.huybery import (DEMO_LAYERS, Recreation, Selection, conv_layers, layer_names,
                                       minmax_uint8, prepare_input, resize_bilinear)
from zfcore.comparison.original import CloneError, Original, Run, find_clone

__all__ = ["huybery", "original", "compare",
           "agreement", "bias_effect", "bias_effect_images", "channel_order", "duplicate_switches",
           "format_table",
           "original_agreement", "relative_error", "support", "support_mask", "switch_flips", "zfcore_figure",
           "DEMO_LAYERS", "Recreation", "Selection", "conv_layers", "layer_names", "minmax_uint8",
           "prepare_input", "resize_bilinear",
           "CloneError", "Original", "Run", "find_clone"]
