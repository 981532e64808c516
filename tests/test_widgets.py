"""The explorer: live widget in Jupyter, and a static first frame plus its controls for the report."""
from __future__ import annotations

import base64

import pytest

pytest.importorskip("ipywidgets")
matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import zfcore as zf  # noqa: E402
from zfcore.errors import ArgumentError  # noqa: E402
from zfcore.viz import widgets  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    net = zf.models.load_model()
    images, _ = zf.data.load_dataset("test", limit=6)
    return net, images


def test_explorer_bundle_has_the_widget_view_the_first_frame_and_the_controls(setup):
    import matplotlib.pyplot as plt

    net, images = setup
    box = widgets.explorer(net, images, layer="conv3")
    data, meta = box._repr_mimebundle_()
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"] == box.model_id
    frame = base64.b64decode(data["image/png"])
    assert frame[:8] == b"\x89PNG\r\n\x1a\n"
    # the frame is the first state of the explorer: image 0, conv3, feature 0, deconvnet
    fig = plt.figure(figsize=(7.5, 2.6))
    widgets.render(net, images, 0, "conv3", 0, "deconvnet", fig)
    assert widgets._png(fig) == frame
    plt.close(fig)
    controls = {c["description"]: c for c in meta["zfcore"]["controls"]}
    assert controls["image"] == {"description": "image", "value": 0, "min": 0, "max": 5}
    assert controls["layer"]["value"] == "conv3" and "conv1" in controls["layer"]["options"]
    assert controls["feature"]["max"] == net.forward(images[:1], upto="conv3")["conv3"].shape[1] - 1
    assert controls["rule"]["options"] == ["deconvnet", "guided", "gradient"]


def test_explorer_rejects_a_layer_that_is_not_spatial(setup):
    net, images = setup
    with pytest.raises(ArgumentError, match="not a spatial layer"):
        widgets.explorer(net, images, layer="fc6")
