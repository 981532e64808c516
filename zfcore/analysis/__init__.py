"""Analyses built on the deconvnet, numpy only: classification summaries (``classify``), top-k
activations over an array or a collection of any size, the paper's Fig. 2 (``topk``; on Dask in
``distributed``), occlusion sensitivity (``sensitivity``: ``occlusion``, the paper's Fig. 7), features
during training (``evolution``), the paper's other studies (``studies``),
explanations that can be checked (``explain``), single classifications explained by contribution
(``contribution``), linear probes of each layer's features (``probes``), 95% intervals of sampled
numbers (``intervals``), and threads over a batch (``parallel``)."""
from zfcore.analysis import (classify, contribution, evolution, explain, intervals, parallel, probes, sensitivity,
                             studies, topk)
from zfcore.analysis.classify import confusion_matrix, most_confused_pairs, per_class_accuracy, predict
from zfcore.analysis.contribution import (Explanation, cosine_similarity, decompose, explain_image,
                                         projection_similarity)
from zfcore.analysis.evolution import (OcclusionPeaks, Settling, class_purity,
                                       feature_evolution, linear_cka, occlusion_peaks, purity_chance, settling,
                                       unit_purity, weight_settling)
from zfcore.analysis.intervals import bootstrap, t_interval, wilson
from zfcore.analysis.probes import (Probe, Scan, fit_softmax, probe, probe_layers, scan_layers,
                                    stratified_halves)
from zfcore.analysis.sensitivity import Occlusion, occlude, occlusion
from zfcore.analysis.topk import TopK, scan_maxima, top_k

__all__ = ["classify", "contribution", "evolution", "explain", "intervals", "parallel", "probes", "sensitivity",
           "studies", "topk",
           "confusion_matrix", "most_confused_pairs", "per_class_accuracy", "predict",
           "Explanation", "cosine_similarity", "decompose", "explain_image", "projection_similarity",
           "feature_evolution", "weight_settling", "linear_cka", "settling", "Settling", "class_purity",
           "unit_purity", "purity_chance", "bootstrap", "t_interval", "wilson",
           "Probe", "Scan", "fit_softmax", "probe", "probe_layers", "scan_layers", "stratified_halves",
           "occlusion_peaks", "OcclusionPeaks", "Occlusion", "occlude", "occlusion",
           "TopK", "scan_maxima", "top_k"]
