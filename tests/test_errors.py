"""One error family over the whole public API: every bad argument raises a ``ZfcoreError`` subclass
(``ArgumentError``, ``DataError``, ``WeightsError`` ...) whose message names the argument, and the
command line prints the same message for the same bad input. Fast: no training, a few images."""
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import zfcore as zf
from zfcore import analysis, data, errors, models
from zfcore.analysis import explain, studies
from zfcore.core import layers as L
from zfcore.core import ops
from zfcore.data import sources
from zfcore.errors import (ArgumentError, DataError, MissingDependencyError, TrainingError, WeightsError,
                           ZfcoreError)
from zfcore.viz import plotting, widgets

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The embedded net, four test images, a record of two, and a folder of bad files."""
    net = models.load_model()
    x, y = data.load_dataset("test", limit=4)
    d = tmp_path_factory.mktemp("bad")
    (d / "garbage-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + bytes(3))
    (d / "random.npz").write_bytes(np.random.default_rng(0).bytes(4000))
    (d / "text.png").write_text("this is not an image")
    (d / "empty").mkdir()
    return SimpleNamespace(net=net, x=x, y=y, rec=net.forward(x[:2]), dir=d,
                           params=models.load_weights(models.default_weights_path("fmnist_zf"))[0])


def conv(name, cin, cout, kernel=3):
    return (name, "conv", dict(in_channels=cin, out_channels=cout, kernel=kernel, stride=1, padding=1))


X = np.zeros((1, 2, 5, 5), np.float32)
W = np.zeros((3, 2, 3, 3), np.float32)

# (id, call on env, expected class, regex the message must match: it names the argument)
CASES = [
    # --- core: ops ----------------------------------------------------------------------------------
    ("ops-conv-channels", lambda e: ops.conv2d(X, np.zeros((3, 4, 3, 3))), ArgumentError,
     r"channel mismatch: x has C=2 channels, w expects 4"),
    ("ops-conv-stride-zero", lambda e: ops.conv2d(X, W, stride=0), ArgumentError, r"stride must be >= 1, got 0"),
    ("ops-conv-padding", lambda e: ops.conv2d(X, W, padding=-1), ArgumentError, r"padding must be >= 0, got -1"),
    ("ops-conv-stride-float", lambda e: ops.conv2d(X, W, stride=1.5), ArgumentError,
     r"stride must be an integer or a pair \(h, w\) of integers, got 1.5"),
    ("ops-conv-2d-image", lambda e: ops.conv2d(X[0, 0], W), ArgumentError, r"x must be 4-D \(N, C, H, W\)"),
    ("ops-pool-kernel-zero", lambda e: ops.max_pool2d(X, 0), ArgumentError, r"kernel must be >= 1, got 0"),
    ("ops-pool-padding-half", lambda e: ops.max_pool2d(X, 3, 2, 2), ArgumentError, r"padding .* at most half"),
    ("ops-unpool-switches", lambda e: ops.max_unpool2d(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2)), (4, 4)),
     ArgumentError, r"switches must be an integer array"),
    ("ops-deconv-output-size", lambda e: ops.conv_transpose2d(np.zeros((1, 3, 3, 3)), W, 2, 1, output_size=(4, 5)),
     ArgumentError, r"output_size \(4, 5\) out of range"),
    ("ops-linear-features", lambda e: ops.linear(np.zeros((1, 3)), np.zeros((2, 4))), ArgumentError,
     r"feature mismatch: x has 3 features, w expects 4"),
    ("ops-dropout-p", lambda e: ops.dropout(X, 1.5), ArgumentError, r"dropout probability p must lie in \[0, 1\]"),
    ("ops-lrn-size", lambda e: ops.local_response_norm(X, 0), ArgumentError, r"size must be >= 1, got 0"),
    ("ops-adaptive", lambda e: ops.adaptive_avg_pool2d(X, 2), ArgumentError, r"5x5 map to 2x2"),
    ("ops-output-size", lambda e: ops.conv_output_size(4, 5), ArgumentError, r"kernel 5 is larger than the padded"),
    # --- core: layers ---------------------------------------------------------------------------------
    ("layer-conv-weight", lambda e: L.Conv2d("c", np.zeros((2, 3, 3))), ArgumentError,
     r"layer 'c': conv weight must be \(F, C, KH, KW\)"),
    ("layer-conv-stride", lambda e: L.Conv2d("c", W, stride=0), ArgumentError, r"layer 'c': stride must be >= 1"),
    ("layer-conv-bias", lambda e: L.Conv2d("c", W, np.zeros(4)), ArgumentError, r"layer 'c': conv bias must be"),
    ("layer-pool-kernel-zero", lambda e: L.MaxPool2d("p", 0), ArgumentError, r"layer 'p': kernel must be >= 1, got 0"),
    ("layer-pool-padding", lambda e: L.MaxPool2d("p", 2, 2, 2), ArgumentError, r"layer 'p': padding .* at most half"),
    ("layer-linear-weight", lambda e: L.Linear("l", np.zeros(3)), ArgumentError, r"layer 'l': linear weight"),
    ("layer-dropout-p", lambda e: L.Dropout("d", 2.0), ArgumentError, r"layer 'd': dropout probability p"),
    ("layer-lrn-size", lambda e: L.LocalResponseNorm("n", 0), ArgumentError, r"layer 'n': size must be >= 1"),
    ("layer-adaptive-size", lambda e: L.AdaptiveAvgPool2d("a", (1, 2, 3)), ArgumentError, r"layer 'a': output_size"),
    ("layer-unknown-kind", lambda e: L.from_spec("x", "softplus", {}), ArgumentError,
     r"layer 'x': unknown kind 'softplus'"),
    ("layer-spec-missing-key", lambda e: L.from_spec("p", "maxpool", {}), ArgumentError,
     r"layer 'p': a maxpool layer needs 'kernel'"),
    ("layer-missing-weights", lambda e: L.from_spec("c", "conv", {}, {}), WeightsError,
     r"layer 'c': parameter 'c.weight' missing"),
    ("layer-unknown-rule", lambda e: L.check_rule("zeiler"), ArgumentError,
     r"unknown rule 'zeiler'.*'deconvnet', 'guided', 'gradient'"),
    # --- Network and Record ---------------------------------------------------------------------------
    ("net-three-channels", lambda e: e.net.forward(np.zeros((1, 3, 28, 28), np.float32)), ArgumentError,
     r"layer 'conv1'.*channel mismatch: x has C=3 channels, w expects 1"),
    ("net-call-three-channels", lambda e: e.net(np.zeros((1, 3, 28, 28), np.float32)), ArgumentError,
     r"layer 'conv1'.*channel mismatch"),
    ("net-2d-image", lambda e: e.net.forward(e.x[0, 0]), ArgumentError, r"input must be 4-D \(N, C, H, W\)"),
    ("net-unknown-upto", lambda e: e.net.forward(e.x, upto="conv55"), ArgumentError,
     r"unknown layer 'conv55'; did you mean 'conv5'"),
    ("net-infer-keep", lambda e: e.net.infer(e.x, keep=["conv55"]), ArgumentError, r"unknown layer 'conv55'"),
    ("net-receptive-fc", lambda e: e.net.receptive_field("fc6"), ArgumentError, r"layer 'fc6' is not spatial"),
    ("net-input-box", lambda e: e.net.input_box("conv5", (99, 0)), ArgumentError,
     r"position \(99, 0\) out of range: layer 'conv5'"),
    ("net-shapes", lambda e: e.net.shapes((0, 5)), ArgumentError, r"input_size must be"),
    ("rec-unknown-layer", lambda e: e.rec["conv55"], ArgumentError, r"unknown layer 'conv55'"),
    ("rec-project-layer", lambda e: e.rec.project("conv55", 0), ArgumentError, r"unknown layer 'conv55'"),
    ("rec-project-feature", lambda e: e.rec.project("conv5", 999), ArgumentError,
     r"feature of layer 'conv5' 999 out of range 0\.\.127"),
    ("rec-project-image", lambda e: e.rec.project("conv5", 0, image=5), ArgumentError, r"image 5 out of range"),
    ("rec-project-rule", lambda e: e.rec.project("conv5", 0, rule="zeiler"), ArgumentError,
     r"unknown rule 'zeiler'"),
    ("rec-project-mode", lambda e: e.rec.project("conv5", 0, mode="x"), ArgumentError, r"unknown mode 'x'"),
    ("rec-project-position", lambda e: e.rec.project("conv5", 0, position=(99, 0)), ArgumentError,
     r"position \(99, 0\) out of range"),
    ("rec-strongest", lambda e: e.rec.strongest("conv5", 999), ArgumentError,
     r"feature of layer 'conv5' 999 out of range"),
    ("rec-backward-signal", lambda e: e.rec.backward(np.zeros((1, 3)), "conv5"), ArgumentError,
     r"signal must be .*'conv5'"),
    ("rec-project-batch", lambda e: e.rec.project_batch("conv5", [0, 999]), ArgumentError,
     r"feature of layer 'conv5' 999 out of range"),
    # --- models ---------------------------------------------------------------------------------------
    ("models-unknown-arch", lambda e: models.get_spec("resnet"), ArgumentError, r"unknown architecture 'resnet'"),
    ("models-build-model-arch", lambda e: models.build_model("vgg61"), ArgumentError,
     r"unknown architecture 'vgg61'; did you mean 'vgg16'"),
    ("models-num-classes", lambda e: models.get_spec("fmnist_zf", num_classes=0), ArgumentError,
     r"num_classes must be >= 1, got 0"),
    ("models-input-shape", lambda e: models.input_shape("resnet"), ArgumentError, r"unknown architecture 'resnet'"),
    ("models-build-conv-channels", lambda e: models.build([conv("c1", 1, 2), conv("c2", 3, 4)]), ArgumentError,
     r"layer 'c2': in_channels 3 does not match the 2 channels of layer 'c1'"),
    ("models-build-input-channels", lambda e: models.build([conv("c1", 3, 2)], input_shape=(1, 8, 8)),
     ArgumentError, r"layer 'c1': in_channels 3 does not match the 1 channels of the input"),
    ("models-build-zero-kernel", lambda e: models.build([conv("c1", 1, 2, kernel=0)]), ArgumentError,
     r"layer 'c1': kernel must be >= 1, got 0"),
    ("models-build-dtype", lambda e: models.build([conv("c1", 1, 2)], dtype=np.int8), ArgumentError,
     r"dtype must be float32 or float64"),
    ("models-build-spec-entries", lambda e: models.build([("c1", "conv")]), ArgumentError,
     r"spec entries are \(name, kind, params\) triples"),
    ("models-build-params-type", lambda e: models.build("fmnist_zf", params=[1, 2]), WeightsError,
     r"params must be a dict"),
    ("models-build-model-weights-type", lambda e: models.build_model("fmnist_zf", weights=42), ArgumentError,
     r"weights must be None, a path"),
    ("models-check-params", lambda e: models.check_params("fmnist_zf", {}, source="mine"), WeightsError,
     r"mine: weights do not fit the architecture"),
    ("models-param-shapes-key", lambda e: models.param_shapes([("c", "conv", dict(kernel=3))]), ArgumentError,
     r"layer 'c': a conv layer needs 'out_channels'"),
    ("models-load-weights-arch", lambda e: models.load_weights(e.dir / "random.npz", arch="resnet"), ArgumentError,
     r"unknown architecture 'resnet'"),
    ("models-load-weights-corrupt", lambda e: models.load_weights(e.dir / "random.npz"), WeightsError,
     r"random.npz: corrupt weights file"),
    ("models-save-arch", lambda e: models.save_weights(e.params, e.dir / "w.npz", "resnet"), ArgumentError,
     r"unknown architecture 'resnet'"),
    ("models-save-suffix", lambda e: models.save_weights(e.params, e.dir / "w.pth", "fmnist_zf"), WeightsError,
     r"w.pth: save_weights writes zfcore .npz files"),
    # --- data and sources -----------------------------------------------------------------------------
    ("data-unknown-split", lambda e: data.load_dataset("validation"), ArgumentError,
     r"unknown split 'validation'"),
    ("data-limit", lambda e: data.load_dataset("test", limit=0), ArgumentError,
     r"limit must be a positive integer .*got 0"),
    ("data-image-missing", lambda e: data.load_image(e.dir / "nothere.png"), DataError, r"nothere.png: no such file"),
    ("data-imagenet-normalize", lambda e: data.imagenet_normalize(e.x), ArgumentError,
     r"imagenet_normalize takes an \(N, 3, H, W\) RGB array, got shape \(4, 1, 28, 28\)"),
    ("data-write-idx", lambda e: data.write_idx(e.dir / "f-idx3-ubyte", e.x[:, 0]), ArgumentError,
     r"write_idx takes a 1-d or 3-d uint8 array"),
    ("data-read-idx", lambda e: data.read_idx(e.dir / "garbage-idx3-ubyte"), DataError, r"garbage-idx3-ubyte: "),
    ("sources-array-empty", lambda e: sources.ArraySource(e.x[:0]), ArgumentError,
     r"images must be a non-empty real \(N, C, H, W\) array"),
    ("sources-ids", lambda e: sources.ArraySource(e.x).load([9]), ArgumentError, r"image ids must be in 0..3"),
    ("sources-unknown-model", lambda e: sources.for_model("vgg61"), ArgumentError,
     r"unknown model 'vgg61'; did you mean 'vgg16'"),
    ("sources-layout", lambda e: sources.open_folder(e.dir, 28, layout="flat"), ArgumentError,
     r"unknown layout 'flat'"),
    ("sources-not-a-folder", lambda e: sources.open_folder(e.dir / "nothere", 28), ArgumentError,
     r"nothere: not a folder"),
    ("sources-no-images", lambda e: sources.FolderSource(e.dir / "empty", 28), ArgumentError,
     r"empty: holds no image files"),
    ("sources-size", lambda e: sources.FolderSource(e.dir, 0), ArgumentError,
     r"size must be an integer or an \(H, W\) pair in 1..4096, got \(0, 0\)"),
    ("sources-test-limit", lambda e: sources.TestSetSource(limit=0), ArgumentError, r"limit must be a positive"),
    # --- analysis -------------------------------------------------------------------------------------
    ("predict-batch-size", lambda e: analysis.predict(e.net, e.x, batch_size=0), ArgumentError,
     r"batch_size must be >= 1, got 0"),
    ("predict-2d-image", lambda e: analysis.predict(e.net, e.x[0, 0]), ArgumentError,
     r"images must be a non-empty \(N, C, H, W\) array"),
    ("predict-three-channels", lambda e: analysis.predict(e.net, np.zeros((1, 3, 28, 28), np.float32)),
     ArgumentError, r"channel mismatch"),
    ("confusion-labels", lambda e: analysis.confusion_matrix([0, 11], [0, 1], 10), ArgumentError,
     r"y_true holds labels outside 0..9"),
    ("top-k-layer", lambda e: analysis.top_k(e.net, e.x, "conv55"), ArgumentError, r"unknown layer 'conv55'"),
    ("top-k-k", lambda e: analysis.top_k(e.net, e.x, "conv5", k=0), ArgumentError, r"k must be .*got 0"),
    ("top-k-batch-size", lambda e: analysis.top_k(e.net, e.x, "conv5", k=1, batch_size=0), ArgumentError,
     r"batch_size must be >= 1, got 0"),
    ("top-k-rule", lambda e: analysis.top_k(e.net, e.x, "conv5", k=1, rule="zeiler"), ArgumentError,
     r"rule 'zeiler'"),
    ("top-k-features", lambda e: analysis.top_k(e.net, e.x, "conv5", k=1, features=[999]), ArgumentError,
     r"features .*0..127"),
    ("top-k-2d-image", lambda e: analysis.top_k(e.net, e.x[0, 0], "conv5", k=1), ArgumentError,
     r"\(N, C, H, W\)"),
    ("occlusion-target", lambda e: analysis.occlusion(e.net, e.x[0], 10), ArgumentError,
     r"target class 10 out of range 0..9"),
    ("occlusion-size", lambda e: analysis.occlusion(e.net, e.x[0], 0, size=0), ArgumentError,
     r"occluder size must be in 1..28, got 0"),
    ("occlusion-feature", lambda e: analysis.occlusion(e.net, e.x[0], 0, layer="conv5", feature=128),
     ArgumentError, r"feature of layer 'conv5' 128 out of range 0..127"),
    ("occlusion-batch-size", lambda e: analysis.occlusion(e.net, e.x[0], 0, batch_size=0), ArgumentError,
     r"batch_size must be >= 1, got 0"),
    ("occlude-stride", lambda e: analysis.occlude(e.x[0], 3, 0), ArgumentError, r"occluder stride must be >= 1"),
    ("studies-deconv-stages-feature", lambda e: studies.deconv_stages(e.net, e.x[0], "conv5", 999), ArgumentError,
     r"feature of layer 'conv5' 999 out of range 0..127"),
    ("studies-deconv-stages-rule", lambda e: studies.deconv_stages(e.net, e.x[0], "conv5", 0, rule="zeiler"),
     ArgumentError, r"unknown rule 'zeiler'"),
    ("studies-project-units", lambda e: studies.project_units(e.net, e.x, "fc7", 10), ArgumentError,
     r"units must be in 0..9"),
    ("studies-transform", lambda e: studies.transform(e.x[0], "shear", 1.0), ArgumentError, r"'shear'"),
    ("studies-invariance", lambda e: studies.invariance(e.net, e.x, e.y[:2], "rotate", [0]), ArgumentError,
     r"labels \(N,\) must match"),
    ("explain-targets", lambda e: explain.logit_gradient(e.net, e.x, "conv5", 10), ArgumentError,
     r"targets must be in 0..9"),
    ("explain-layer", lambda e: explain.logit_gradient(e.net, e.x, "conv55", 0), ArgumentError,
     r"unknown layer 'conv55'"),
    ("explain-rule", lambda e: explain.class_specificity(e.net, e.x, "zeiler"), ArgumentError,
     r"unknown rule 'zeiler'"),
    # --- viz ------------------------------------------------------------------------------------------
    ("explorer-2d-image", lambda e: widgets.explorer(e.net, e.x[0, 0]), ArgumentError,
     r"images must be a non-empty \(N, C, H, W\) array"),
    ("explorer-layer", lambda e: widgets.explorer(e.net, e.x, layer="conv55"), ArgumentError,
     r"unknown layer 'conv55'; did you mean 'conv5'"),
    ("explorer-render-image", lambda e: widgets.render(e.net, e.x, 9, "conv5", 0), ArgumentError,
     r"image 9 out of range 0..3"),
    ("explorer-render-feature", lambda e: widgets.render(e.net, e.x, 0, "conv5", 128), ArgumentError,
     r"feature of layer 'conv5' 128 out of range 0..127"),
    ("plotting-mode", lambda e: plotting.to_display(e.x[0], mode="log"), ArgumentError,
     r"unknown display mode 'log'"),
    ("plotting-montage", lambda e: plotting.montage([], 2), ArgumentError, r"montage needs at least one image"),
    # --- training (arguments are checked before torch is imported) -------------------------------------
    ("train-batch-size", lambda e: _train(e, batch_size=0), ArgumentError,
     r"batch size must be a positive integer, got 0"),
    ("train-epochs", lambda e: _train(e, epochs=-1), ArgumentError, r"epochs must be a positive integer, got -1"),
    ("train-lr", lambda e: _train(e, lr=float("nan")), ArgumentError, r"learning rate must be a finite number"),
    ("train-device", lambda e: _train(e, device="tpu"), ArgumentError, r"device must be auto, cpu, cuda"),
    ("train-arch", lambda e: _train(e, spec="fmnist_zff"), ArgumentError,
     r"unknown architecture 'fmnist_zff'; did you mean 'fmnist_zf'"),
]


def _train(e, **kw):
    from zfcore.torch.train import train

    return train(**dict(dict(out=e.dir / "run", quiet=True), **kw))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_argument_raises_a_zfcore_error_naming_it(env, case):
    name, call, cls, pattern = case
    with pytest.raises(cls) as info:
        call(env)
    assert isinstance(info.value, ZfcoreError) and isinstance(info.value, ValueError)
    assert re.search(pattern, str(info.value)), str(info.value)
    assert type(info.value).__module__ == "zfcore.errors", type(info.value)


def test_the_family():
    for cls in (ArgumentError, DataError, WeightsError, TrainingError, MissingDependencyError):
        assert issubclass(cls, ZfcoreError) and issubclass(cls, ValueError)
    assert issubclass(MissingDependencyError, ImportError)
    assert zf.ZfcoreError is ZfcoreError and zf.errors is errors
    from zfcore.comparison.original import CloneError
    assert issubclass(CloneError, ZfcoreError)


def test_one_checker_one_wording():
    """The integer checks of the core ops and of the analyses are the same functions, same words."""
    from zfcore.core import _checks
    assert _checks.is_int is errors.is_int
    for bad, words in ((0, "must be >= 1, got 0"), (2.5, "must be an integer, got 2.5"),
                       (True, "must be an integer, got True")):
        with pytest.raises(ArgumentError) as a:
            errors.check_count(bad, "stride", 1)
        with pytest.raises(ArgumentError) as b:
            ops.conv_output_size(5, 3, bad)
        assert str(a.value) == str(b.value) == f"stride {words}"
    assert errors.check_count(np.int64(3), "k") == 3 and errors.check_index(np.int32(2), 3, "i") == 2


def test_no_plain_value_error_left_in_the_package():
    """Every ``raise`` of a bad-input exception in zfcore raises one of the family (``zfcore.errors``);
    the only exceptions are the kernels' private test hook and the internal consistency check below."""
    allowed = {("core/_tuning.py", "ValueError"), ("core/layers.py", "RuntimeError")}
    found = []
    for path in sorted((REPO / "zfcore").rglob("*.py")):
        rel = path.relative_to(REPO / "zfcore").as_posix()
        for m in re.finditer(r"raise (ValueError|TypeError|KeyError|IndexError|RuntimeError)\(",
                             path.read_text()):
            if (rel, m.group(1)) not in allowed:
                found.append(f"{rel}: raise {m.group(1)}")
    assert not found, found


# --- the command line prints the API's message --------------------------------------------------------
def _cli_line(argv, out, capsys) -> str:
    from zfcore.cli.main import main

    rc = main([str(a) for a in argv] + ["--out", str(out)])
    err = capsys.readouterr()[1].strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    return err[0]


def _api_message(call) -> str:
    from zfcore.cli.main import one_line

    with pytest.raises(ZfcoreError) as info:
        call()
    return one_line(info.value)


@pytest.mark.parametrize("argv, api", [
    (["project", "--test-index", "0", "--layer", "conv55"], lambda e: e.rec.project("conv55", 0)),
    (["project", "--test-index", "0", "--layer", "conv55"], lambda e: e.net.forward(e.x, upto="conv55")),
    (["topk", "--layer", "conv1", "conv55"], lambda e: analysis.top_k(e.net, e.x, ["conv1", "conv55"], k=1)),
    (["project", "--test-index", "0", "--layer", "conv5", "--feature", "999"],
     lambda e: e.rec.project("conv5", 999)),
    (["project", "--test-index", "0", "--layer", "conv5", "--feature", "999"],
     lambda e: studies.deconv_stages(e.net, e.x[0], "conv5", 999)),
    (["occlusion", "--test-index", "0", "--layer", "conv5", "--feature", "128"],
     lambda e: analysis.occlusion(e.net, e.x[0], 0, layer="conv5", feature=128)),
    (["occlusion", "--test-index", "0", "--target", "10"], lambda e: analysis.occlusion(e.net, e.x[0], 10)),
    (["classify", "--test-index", "0", "--weights", "{dir}/random.npz"],
     lambda e: models.build_model("fmnist_zf", weights=e.dir / "random.npz")),
    (["classify", "{dir}/nothere.png"], lambda e: data.load_image(e.dir / "nothere.png", size=(28, 28), mode="L")),
], ids=["unknown-layer-project", "unknown-layer-forward", "unknown-layer-topk", "feature-out-of-range",
        "feature-out-of-range-studies",
        "occlusion-feature", "occlusion-target", "corrupt-weights", "missing-image"])
def test_cli_prints_the_api_message(env, argv, api, capsys, tmp_path):
    """For the same bad input, the command line's one line is ``zfcore <command>: error: <message>``
    with the message the Python API raises."""
    argv = [a.replace("{dir}", str(env.dir)) for a in argv]
    line = _cli_line(argv, tmp_path / "out", capsys)
    assert line == f"zfcore {argv[0]}: error: {_api_message(lambda: api(env))}"
