"""Analyses built on the deconvnet, numpy only: classification summaries (``classify``), top-k
activations over an array or a collection of any size, the paper's Fig. 2 (``topk``; on Dask in
``distributed``), occlusion sensitivity (``sensitivity``: ``occlusion``, the paper's Fig. 7), features
during training (``evolution``), the paper's other studies (``studies``),
explanations that can be checked (``explain``), and threads over a batch (``parallel``)."""
from zfcore.analysis import classify, evolution, explain, parallel, sensitivity, studies, topk
from zfcore.analysis.classify import confusion_matrix, most_confused_pairs, per_class_accuracy, predict
from zfcore.analysis.evolution import feature_evolution, weight_settling
from zfcore.analysis.sensitivity import Occlusion, occlude, occlusion
from zfcore.analysis.topk import TopK, scan_maxima, top_k

__all__ = ["classify", "evolution", "explain", "parallel", "sensitivity", "studies", "topk",
           "confusion_matrix", "most_confused_pairs", "per_class_accuracy", "predict",
           "feature_evolution", "weight_settling", "Occlusion", "occlude", "occlusion",
           "TopK", "scan_maxima", "top_k"]
