"""Features during training (the paper's Fig. 4): each checkpoint's strongest activation of chosen
features and its projection; how early each layer's filters reach their final direction.

numpy only. Axis letters: F features, C H W an image.
"""
from __future__ import annotations

import numpy as np

from zfcore.analysis.topk import top_k


# --- feature evolution during training (the paper's Fig. 4) -------------------------------------------
def feature_evolution(nets, images, layer: str, features, batch_size: int = 500):
    """For each network in ``nets`` (e.g. training checkpoints) and each feature: the strongest
    activation of that feature over ``images`` (an (N, C, H, W) array or a ``zfcore.data.sources``
    source) and its projection (``top_k`` with k=1). Returns (projections (len(nets), F, C, H, W),
    values (len(nets), F), image indices (len(nets), F))."""
    features = np.atleast_1d(np.asarray(features))
    projs, vals, idxs = [], [], []
    for net in nets:
        t = top_k(net, images, layer, k=1, features=features, batch_size=batch_size)
        projs.append(t.projections[:, 0])
        vals.append(t.values[:, 0])
        idxs.append(t.images[:, 0])
    return np.stack(projs), np.stack(vals), np.stack(idxs)


def weight_settling(nets, layers, threshold: float = 0.9):
    """How early each layer's filters reach their final direction: for networks ``nets`` in training order
    (the last one final), the cosine similarity of each layer's flattened weights with the last network's.
    Returns (dict layer -> (len(nets),) cosines, dict layer -> index of the first network whose cosine is
    >= ``threshold``)."""
    final = nets[-1].params
    cos, first = {}, {}
    for layer in layers:
        b = final[f"{layer}.weight"].ravel().astype(np.float64)
        c = []
        for n in nets:
            a = n.params[f"{layer}.weight"].ravel().astype(np.float64)
            c.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
        cos[layer] = np.array(c)
        first[layer] = int(np.argmax(cos[layer] >= threshold))
    return cos, first
