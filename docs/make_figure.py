"""Draw docs/figure.png, the README's picture: the deconvnet on the embedded model, offline.

One test image of each of eight classes; under each, the strongest feature of conv2 and of conv5 for
that image, its strongest activation projected back to pixels (``rule="deconvnet"``), with the
receptive field of that activation drawn as a box where the field is smaller than the image (conv5's,
43x43, covers the whole 28x28 image).

    .venv/bin/python docs/make_figure.py            # writes docs/figure.png
"""
from pathlib import Path

import numpy as np

import zfcore as zf
from zfcore.viz import plotting

CLASSES = (0, 1, 2, 3, 5, 7, 8, 9)      # T-shirt, trouser, pullover, dress, sandal, sneaker, bag, boot
LAYERS = ("conv2", "conv5")
OUT = Path(__file__).resolve().parent / "figure.png"


def projections(net, images, layer):
    """For each image of the batch (N, C, H, W): its strongest feature of ``layer`` (N,), that
    feature's strongest activation projected to pixels (N, C, H, W), and its input box (N, 4)."""
    rec = net.forward(images)                                   # the pass as a value
    feats = [int(rec.top_features(layer, image=i)[0][0]) for i in range(len(images))]
    proj = rec.project_batch(layer, feats, images=list(range(len(images))))
    boxes = [rec.input_box(layer, rec.strongest(layer, f, i)) for i, f in enumerate(feats)]
    return feats, proj, boxes


def main(out=OUT):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    net = zf.models.load_model()
    x, y = zf.data.load_dataset("test", limit=200)
    idx = [int(np.flatnonzero(y == c)[0]) for c in CLASSES]
    images = x[idx]                                             # (8, 1, 28, 28)
    rows = {layer: projections(net, images, layer) for layer in LAYERS}

    n = len(idx)
    fig, axes = plt.subplots(1 + len(LAYERS), n, figsize=(1.1 * n, 1.35 * (1 + len(LAYERS))), squeeze=False)
    for j in range(n):
        plotting.show(axes[0, j], images[j], zf.data.CLASSES[y[idx[j]]], mode="clip")
        plotting.draw_box(axes[0, j], rows["conv2"][2][j], lw=1.0)
        for r, layer in enumerate(LAYERS, start=1):
            feats, proj, boxes = rows[layer]
            plotting.show(axes[r, j], proj[j], f"{layer} #{feats[j]}", mode="symmetric")
            if net.receptive_field(layer).size[0] < images.shape[2]:
                plotting.draw_box(axes[r, j], boxes[j], lw=1.0)
    for ax in axes.flat:
        ax.title.set_fontsize(7)
    fig.tight_layout(pad=0.3, h_pad=0.6, w_pad=0.3)
    fig.savefig(out, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(main())
