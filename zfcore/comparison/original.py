"""Run the ORIGINAL huybery/VisualizingCNN code from a user's clone, on zfcore's VGG16 weights (notebook 06).

The project holds none of that repository's code. A user who wants the original run clones it
(``git clone https://github.com/huybery/VisualizingCNN``) and points zfcore at the clone, through the
``path`` argument or ``$ZFCORE_HUYBERY``. :func:`load` then imports the clone's own files, unmodified:
``main.py`` (its ``load_images``, ``store`` (the hooks) and ``vis_layer`` (selection, mirror, min-max to
uint8)), which imports ``models`` (``Vgg16Conv``, ``Vgg16Deconv``) and ``utils`` from the clone. Two things
are changed from outside, during construction only:

* where the original calls ``torchvision.models.vgg16(pretrained=True)`` (a download of the ImageNet
  weights), a stand-in returns a torchvision VGG16 holding the zfcore parameters given (seeded random
  weights by default), so both sides run the same weights offline;
* ``main.py`` selects matplotlib's ``agg`` backend when imported; that call is skipped, so a notebook
  keeps its own backend.

The deconv biases are as the original leaves them (PyTorch's random initialisation of
``ConvTranspose2d``, drawn here from ``bias_seed``) or zeroed afterwards (:meth:`Original.deconv_bias`).
Its ``main.py`` imports OpenCV (``cv2``; pip: ``opencv-python-headless``, extra ``zfcore[huybery]``).

torch is imported inside functions only; importing this module needs numpy alone.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zfcore.errors import ArgumentError, ZfcoreError

ENV = "ZFCORE_HUYBERY"
URL = "https://github.com/huybery/VisualizingCNN"
FILES = ("main.py", "models/__init__.py", "models/vgg16_conv.py", "models/vgg16_deconv.py",
         "utils/__init__.py", "utils/utils.py")
HOW_TO = (f"git clone {URL} /path/to/VisualizingCNN, then set {ENV}=/path/to/VisualizingCNN "
          f"(or pass path=) and install OpenCV (pip install opencv-python-headless)")


class CloneError(ZfcoreError):
    """No huybery/VisualizingCNN clone is configured, or the path given is not a usable clone."""


def find_clone(path=None) -> Path | None:
    """The clone to use: ``path``, else ``$ZFCORE_HUYBERY``, else None (no clone configured).

    A path that is given but is not a clone (a missing folder, or one of :data:`FILES` missing) raises
    :class:`CloneError` naming the path and what is missing.
    """
    where = "path" if path is not None else f"${ENV}"
    path = path if path is not None else os.environ.get(ENV) or None
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_dir():
        raise CloneError(f"{where} = {str(path)!r}: no such folder (expected a clone of {URL})")
    missing = [f for f in FILES if not (p / f).is_file()]
    if missing:
        raise CloneError(f"{where} = {str(path)!r} is not a clone of {URL}: missing {', '.join(missing)}")
    return p.resolve()


@contextlib.contextmanager
def _weights_from(params: dict):
    """Inside the block, ``torchvision.models.vgg16(...)`` returns a VGG16 holding zfcore ``params``."""
    from unittest import mock

    import torchvision

    from zfcore.models import weights

    real = torchvision.models.vgg16
    state = weights.zfcore_to_torchvision("vgg16", params, as_torch=True)

    built = []

    def vgg16(*args, **kwargs):          # the original asks for pretrained=True; it only reads the weights
        if not built:
            built.append(real(weights=None))
            built[0].load_state_dict(state)
        return built[0]

    with mock.patch.object(torchvision.models, "vgg16", vgg16):
        yield


def _import_main(clone: Path):
    """The clone's ``main.py`` as a module (its ``models`` and ``utils`` imported from the clone); the
    interpreter's ``sys.path`` and ``sys.modules`` entries for ``models`` / ``utils`` are restored after."""
    import importlib.util
    from unittest import mock

    import matplotlib

    def ours(name):
        return name in ("models", "utils") or name.startswith(("models.", "utils."))

    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if ours(k)}
    sys.path.insert(0, str(clone))
    try:
        with mock.patch.object(matplotlib, "use", lambda *a, **k: None):
            spec = importlib.util.spec_from_file_location("huybery_visualizingcnn_main", clone / "main.py")
            main = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(main)
    finally:
        sys.path.remove(str(clone))
        for k in [k for k in sys.modules if ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
    return main


@dataclass
class Run:
    """One call of the original's ``vis_layer``: ``layer`` (``features`` index), ``image`` (H, W, 3) uint8
    as it returns it, ``activation`` (its int), ``feature`` and ``positions`` kept by its selection,
    ``start`` (the map it fed the mirror, a tensor) and ``output`` (the mirror's float output (C, H, W))."""
    layer: int
    image: np.ndarray
    activation: int
    feature: int
    positions: list = field(default_factory=list)
    start: object = None
    output: np.ndarray | None = None


class Original:
    """The original's two networks built from a clone, on given VGG16 weights; see :func:`load`.

    Attributes: ``path``, ``main`` (its ``main.py``), ``conv`` (``Vgg16Conv``, hooks registered by its
    ``store``), ``deconv`` (``Vgg16Deconv``), ``published_biases`` (the deconv biases it drew).
    """

    def __init__(self, path: Path, main, conv, deconv):
        from torch import nn

        self.path, self.main, self.conv, self.deconv = path, main, conv, deconv
        self._transposed = [m for m in deconv.features if isinstance(m, nn.ConvTranspose2d)]
        self.published_biases = [m.bias.detach().clone() for m in self._transposed]

    def deconv_bias(self, which: str) -> None:
        """``"published"``: the random biases the original drew; ``"zero"``: all deconv biases zero."""
        if which not in ("published", "zero"):
            raise ArgumentError(f"deconv bias must be 'published' or 'zero', got {which!r}")
        for m, b in zip(self._transposed, self.published_biases):
            m.bias.data = b.clone() if which == "published" else b.new_zeros(b.shape)

    def load_image(self, path=None):
        """The original's ``load_images`` (OpenCV: BGR, 224 x 224, RGB ImageNet statistics) of ``path``
        (default: the clone's ``data/cat.jpg``, its demo photo) -> (1, 3, 224, 224) float32 numpy."""
        path = Path(path) if path is not None else self.path / "data" / "cat.jpg"
        if not path.is_file():
            raise CloneError(f"image {str(path)!r}: no such file")
        return self.main.load_images(str(path)).numpy()

    def forward(self, x):
        """The original's forward (hooks store maps and switches); x (1, 3, 224, 224) -> softmax (1, 1000)."""
        import torch

        with torch.no_grad():
            return self.conv(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))

    def vis_layer(self, layer: int) -> Run:
        """Call the original's ``vis_layer`` on the last forward, capturing what it fed its mirror and the
        mirror's float output (hooks on ``Vgg16Deconv``; its printed activation is swallowed)."""
        seen = {}
        pre = self.deconv.register_forward_pre_hook(lambda m, args: seen.update(args=args))
        post = self.deconv.register_forward_hook(lambda m, args, out: seen.update(out=out))
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                image, act = self.main.vis_layer(layer, self.conv, self.deconv)
        finally:
            pre.remove()
            post.remove()
        start, _, mark = seen["args"][:3]
        positions = [tuple(int(v) for v in p) for p in start[0, mark].nonzero().tolist()]
        return Run(int(layer), image, int(act), int(mark), positions, start, seen["out"][0].detach().numpy())

    def mirror(self, start, layer: int, feature: int, switches: dict) -> np.ndarray:
        """The original's ``Vgg16Deconv`` from ``start`` with other switches (``{features index: tensor}``)
        -> (C, H, W) float32."""
        import torch

        with torch.no_grad():
            return self.deconv(start, layer, feature, switches)[0].numpy()


def load(path=None, params: dict | None = None, seed: int = 0, bias_seed: int = 0) -> Original:
    """Build the original's ``Vgg16Conv`` and ``Vgg16Deconv`` from the clone at ``path`` (or
    ``$ZFCORE_HUYBERY``) with zfcore's VGG16 ``params`` (default: ``zfcore.models.build_model("vgg16",
    seed=seed).params``). The deconv biases are drawn by PyTorch from ``bias_seed`` (the original draws new
    ones on every run). Raises :class:`CloneError` when no clone is configured or it is incomplete."""
    import torch

    clone = find_clone(path)
    if clone is None:
        raise CloneError(f"no clone of huybery/VisualizingCNN configured: {HOW_TO}")
    if params is None:
        from zfcore import models

        params = models.build_model("vgg16", seed=seed).params
    main = _import_main(clone)
    with _weights_from(params), torch.random.fork_rng(devices=[]):
        torch.manual_seed(bias_seed)
        conv = main.Vgg16Conv().eval()
        deconv = main.Vgg16Deconv().eval()
    main.store(conv)
    return Original(clone, main, conv, deconv)
