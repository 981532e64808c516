"""Weights files and the models behind the command line: shapes and dtypes are checked before anything
is converted or allocated; a hostile .pth is refused in zfcore's own words; messages that reach a
command-line user give command-line advice; ``--weights random``; every ``--help`` shows the defaults;
``report`` takes only the options it honours."""
import json
import pickle
import re
import sys
import tracemalloc
import warnings

import numpy as np
import pytest

from memory import rss_growth
from zfcore import cli, models
from zfcore.cli import commands
from zfcore.cli.main import build_parser
from zfcore.errors import WeightsError

BIG = 20000                       # an expanded 20000 x 20000 tensor: 4 bytes stored, 1.6 GB as float32


@pytest.fixture(scope="module")
def fm_params():
    return models.load_weights(models.default_weights_path("fmnist_zf"))[0]


def _state(fm_params, torch, **replace):
    state = {k: torch.from_numpy(v.copy()) for k, v in fm_params.items()}
    state.update(replace)
    return state


def _run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# --- 1, 7: shapes, dtypes and sizes before any conversion -------------------------------------------------
def test_expanded_pth_refused_before_conversion(fm_params, tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "expanded.pth"
    torch.save(_state(fm_params, torch, **{"conv1.weight": torch.zeros(1).expand(BIG, BIG)}), path)
    tracemalloc.start()
    try:
        with pytest.raises(WeightsError) as e:
            models.load_weights(path)
        with pytest.raises(WeightsError):
            models.build_model("fmnist_zf", weights=path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, peak                                  # not the 1.6 GB of a conversion
    msg = str(e.value)
    assert msg.startswith(f"{path}: weights do not fit the architecture: shape mismatch for conv1.weight: "
                          f"expected (32, 1, 5, 5), found ({BIG}, {BIG})"), msg
    assert ":;" not in msg and "\n" not in msg


def test_expanded_tensors_cost_no_memory(fm_params, tmp_path):
    """Peak RSS (torch's own allocations included) of loading expanded float32 and bfloat16 tensors from a
    file and of building from a dict of them: each refused, with less than 200 MB of growth."""
    torch = pytest.importorskip("torch")
    for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        torch.save(_state(fm_params, torch, **{"conv1.weight": torch.zeros(1, dtype=dtype).expand(BIG, BIG)}),
                   tmp_path / f"{name}.pth")
    code = ("out = []\ndef refused(call):\n    try:\n        call()\n        out.append('loaded')\n"
            "    except zfcore.errors.WeightsError as e:\n        out.append('refused: ' + str(e))\n"
            f"for name in ('f32', 'bf16'):\n"
            f"    refused(lambda: zfcore.models.load_weights({str(tmp_path)!r} + '/' + name + '.pth'))\n"
            f"state = torch.load({str(tmp_path / 'bf16.pth')!r}, weights_only=True)\n"
            "refused(lambda: zfcore.models.build_model('fmnist_zf', weights=state))\n"
            "result = '|'.join(out)\n")
    growth, result = rss_growth(code, "import torch, numpy, zfcore.models, zfcore.errors")
    results = result.split("|")
    assert len(results) == 3 and all(r.startswith("refused: ") for r in results), result
    assert all(f"found ({BIG}, {BIG})" in r for r in results), result
    assert growth < 200, (growth, result)


def test_classifier_width_capped_and_views_refused(fm_params, tmp_path):
    """The classifier's row count is read from the file (1..100000), and a tensor must hold its data: an
    expanded view of the right shape would still materialise gigabytes for a wide classifier."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "wide.pth"
    wide = {"fc7.weight": torch.zeros(1).expand(10**6, 512), "fc7.bias": torch.zeros(1).expand(10**6)}
    torch.save(_state(fm_params, torch, **wide), path)
    with pytest.raises(WeightsError, match=r"wide.pth: fc7.weight has 1000000 rows \(classes\); at least 1 "
                                            r"and at most 100000 are read"):
        models.load_weights(path, arch="fmnist_zf")
    view = {"fc7.weight": torch.zeros(1).expand(50000, 512), "fc7.bias": torch.zeros(50000)}
    torch.save(_state(fm_params, torch, **view), path)
    with pytest.raises(WeightsError, match=r"wide.pth: fc7.weight \(50000, 512\) is an expanded view of 4 "
                                           r"stored bytes"):
        models.load_weights(path, arch="fmnist_zf")
    legit = {"fc7.weight": torch.zeros(20, 512), "fc7.bias": torch.zeros(20)}   # another task's width
    torch.save(_state(fm_params, torch, **legit), path)
    params, _ = models.load_weights(path, arch="fmnist_zf")
    assert params["fc7.weight"].shape == (20, 512) and params["fc7.weight"].dtype == np.float32


def test_pth_dtypes_checked(fm_params, tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "int.pth"
    torch.save(_state(fm_params, torch, **{"conv2.bias": torch.zeros(64, dtype=torch.int64)}), path)
    with pytest.raises(WeightsError, match=r"int.pth: conv2.bias has dtype torch.int64; only floating-point "
                                           r"weights are read"):
        models.load_weights(path)


def test_dict_weights_checked_before_conversion(fm_params):
    """build_model with a dict: the shapes from .shape first (a broadcast numpy view is never copied),
    NaN refused as from a file."""
    bad = dict(fm_params, **{"conv1.weight": np.broadcast_to(np.float16(0), (BIG, BIG))})
    tracemalloc.start()
    try:
        with pytest.raises(WeightsError, match=r"shape mismatch for conv1.weight: expected \(32, 1, 5, 5\)"):
            models.build_model("fmnist_zf", weights=bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, peak
    nan = dict(fm_params, **{"fc7.bias": np.full(10, np.nan, np.float32)})
    with pytest.raises(WeightsError, match=r"params: NaN or infinite values in fc7.bias"):
        models.build_model("fmnist_zf", weights=nan)
    text = dict(fm_params, **{"fc7.bias": np.array(["a"] * 10)})
    with pytest.raises(WeightsError, match=r"params: fc7.bias has dtype <U1, not a real number type"):
        models.build_model("fmnist_zf", weights=text)


def _npz(path, arrays, arch="fmnist_zf"):
    """A zfcore .npz written by hand (numpy's own writer), for files save_weights would refuse."""
    np.savez_compressed(path, __zfcore__=np.array(json.dumps({"arch": arch, "meta": {}})), **arrays)


def test_npz_missing_members_refused_before_any_is_read(tmp_path):
    """The member list is checked from the zip directory: a file holding only a classifier of 100000
    float64 rows (410 MB unpacked from a few hundred kB) is refused before that member is read."""
    path = tmp_path / "part.npz"
    _npz(path, {"fc7.weight": np.zeros((100000, 512))})
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(WeightsError) as e:
            models.load_weights(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, peak
    assert str(e.value).startswith(f"{path}: weights do not fit the architecture: missing keys: "
                                   "conv1.weight (32, 1, 5, 5), conv1.bias (32,)"), str(e.value)


@pytest.mark.slow
def test_npz_members_converted_without_a_second_copy(fm_params, tmp_path):
    """A valid file with a 100000-class float64 classifier: read into float32 a slice at a time, so the
    peak is about the float32 parameters (205 MB here), not that plus the 410 MB of float64 bytes."""
    path = tmp_path / "wide.npz"
    _npz(path, dict(fm_params, **{"fc7.weight": np.zeros((100000, 512)), "fc7.bias": np.zeros(100000)}))
    need = 100000 * 513 * 4
    tracemalloc.start()
    try:
        params, _ = models.load_weights(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert params["fc7.weight"].shape == (100000, 512) and params["fc7.weight"].dtype == np.float32
    assert not params["fc7.weight"].any()
    assert np.array_equal(params["conv1.weight"], fm_params["conv1.weight"])
    assert peak < 1.4 * need, (peak, need)


# --- 2: a hostile pickle --------------------------------------------------------------------------------
class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_hostile_pth_refused_in_our_words(tmp_path, capsys):
    pytest.importorskip("torch")
    marker, path = tmp_path / "pwned", tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv1.weight": _Payload(marker)}, protocol=2))   # torch.save's protocol
    with pytest.raises(WeightsError) as e:
        models.load_weights(path)
    msg = str(e.value)
    assert msg == (f"{path}: refused: not a plain state dict (the file's pickle names other objects than "
                   "tensors, and zfcore never unpickles arbitrary objects)"), msg
    assert "weights_only" not in msg and not marker.exists()
    rc, _, err = _run(["classify", "--test-index", 0, "--weights", path, "--out", tmp_path / "o"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "weights_only" not in err and not marker.exists()


def test_pth_of_another_pickle_protocol_is_corrupt_without_advice(tmp_path):
    """Protocol 4 (which torch's reader does not take): a corrupt file, torch's reason, not its advice
    nor its warning on stderr (a second line under the command line's one)."""
    pytest.importorskip("torch")
    marker, path = tmp_path / "pwned", tmp_path / "evil4.pth"
    path.write_bytes(pickle.dumps({"conv1.weight": _Payload(marker)}, protocol=4))
    with warnings.catch_warnings(record=True) as said, pytest.raises(WeightsError) as e:
        warnings.simplefilter("always")
        models.load_weights(path)
    assert said == [] and not marker.exists()
    assert str(e.value).startswith(f"{path}: corrupt or unreadable PyTorch weights file (not a pickle that "
                                   "torch.load(weights_only=True) reads: Unsupported operand"), str(e.value)
    assert "weights_only=False" not in str(e.value) and "\n" not in str(e.value)


# --- 3: command-line advice --------------------------------------------------------------------------------
def test_missing_imagenet_weights_give_command_line_advice(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ZFCORE_VGG16", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    png = tmp_path / "x.png"
    rc, _, err = _run(["classify", png, "--model", "vgg16", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "--weights FILE" in err and "--weights random" in err, err
    assert "Pass path=" not in err and "$ZFCORE_VGG16 (not set)" in err
    rc, _, err = _run(["classify", png, "--model", "zfnet", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "--weights FILE" in err and "--weights random" in err and "pass path=" not in err


def test_missing_embedded_weights_give_command_line_advice(tmp_path, monkeypatch):
    from zfcore.models import weights
    monkeypatch.setattr(weights, "ASSETS", tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        models.default_weights_path("fmnist_zf")
    assert "zfcore train" in str(e.value) and "--weights random" in str(e.value)


# --- 4: --weights random -------------------------------------------------------------------------------
def test_random_weights_said_loudly(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure
    texts, save = [], Figure.savefig

    def savefig(fig, *a, **k):
        texts.extend(t.get_text() for t in fig.texts)
        return save(fig, *a, **k)

    monkeypatch.setattr(Figure, "savefig", savefig)
    rc, out, err = _run(["classify", "--test-index", 0, 1, "--weights", "random", "--seed", 3,
                         "--out", tmp_path / "r"], capsys)
    assert rc == 0
    assert err.splitlines()[0] == ("zfcore classify: warning: --weights random: fmnist_zf with random "
                                   "weights (seed 3), not a trained model"), err
    lines = out.strip().splitlines()
    assert all(line.startswith("[random weights, seed 3] ") for line in lines), out
    assert "random weights (seed 3): not a trained model" in texts, texts
    s = json.loads((tmp_path / "r" / "classify.json").read_text())
    assert s["model"] == {"arch": "fmnist_zf", "weights": "random weights, seed 3", "weights_seed": 3}
    # the seed decides the weights: the same as the API's build_model(seed=3), another seed differs
    net = models.build_model("fmnist_zf", seed=3)
    from zfcore import data
    from zfcore.core import ops
    xs, _ = data.load_dataset("test", limit=2)
    probs = ops.softmax(net(xs))
    assert [r["predicted"] for r in s["results"]] == [int(p.argmax()) for p in probs]
    texts.clear()
    rc, out, err = _run(["classify", "--test-index", 0, "--out", tmp_path / "t", "--quiet"], capsys)
    assert rc == 0 and err == "" and not any("random" in t for t in texts)   # trained weights: no mark
    s = json.loads((tmp_path / "t" / "classify.json").read_text())
    assert set(s["model"]) == {"arch", "weights", "weights_sha256"}


@pytest.mark.slow
def test_random_weights_vgg16_without_files(tmp_path, capsys, monkeypatch):
    """--model vgg16 --weights random needs no ImageNet weights (load_net only: no forward pass)."""
    import argparse
    from zfcore.cli import common
    monkeypatch.delenv("ZFCORE_VGG16", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    args = argparse.Namespace(model="vgg16", weights="random", seed=1, command="project")
    net, model = common.load_net(args)
    assert model == {"arch": "vgg16", "weights": "random weights, seed 1", "weights_seed": 1}
    same = models.build_model("vgg16", seed=1).params["conv1_1.weight"]
    assert np.array_equal(net.params["conv1_1.weight"], same)
    assert "warning: --weights random: vgg16 with random weights (seed 1)" in capsys.readouterr()[1]


# --- 5: --help shows the defaults ---------------------------------------------------------------------------
def _subparsers():
    import argparse
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_help_shows_every_default(name):
    import argparse
    parser = _subparsers()[name]
    text = " ".join(parser.format_help().split())
    assert "(default: None)" not in text
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._VersionAction)) or a.required:
            continue
        flag = a.option_strings[-1] if a.option_strings else a.dest
        assert a.help, f"{name} {flag}: no help"
        help_text = " ".join(a.help.split())
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            continue                                              # an on/off flag: off unless given
        if a.default is None:                                     # the help says what None means
            assert re.search(r"\bdefault\b", help_text), f"{name} {flag}: {a.help!r}"
        else:
            listed = isinstance(a.default, (list, tuple))
            shown = " ".join(map(str, a.default)) if listed else str(a.default)
            assert f"default: {shown}" in text or f"default: --{a.dest.replace('_', '-')}" in text, \
                f"{name} {flag}: default {a.default!r} not shown"


# --- 6: report takes what it honours ---------------------------------------------------------------
@pytest.fixture
def fake_source(tmp_path, monkeypatch):
    """A source checkout whose report/build.py prints its arguments on stdout and, if asked, fails."""
    root = tmp_path / "src"
    (root / "report").mkdir(parents=True)
    (root / "notebooks").mkdir()
    (root / "report" / "build.py").write_text(
        "import sys\nprint('building', sys.argv[1:], flush=True)\n"
        "if '--only' in sys.argv and sys.argv[-1] == '99':\n"
        "    print('Traceback (most recent call last): the builder', file=sys.stderr)\n"
        "    print('error: no chapter 99', file=sys.stderr)\n    sys.exit(2)\n")
    monkeypatch.setattr(commands, "SOURCE_ROOT", root)
    return root


def test_report_options(fake_source, tmp_path, capfd):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["report", "--seed", "1"])
    assert e.value.code == 2
    assert "--seed" in capfd.readouterr().err
    assert "--seed" not in _subparsers()["report"].format_help()
    assert cli.main(["report", "--only", "01", "--force", "--out", str(tmp_path / "r")]) == 0
    out = capfd.readouterr().out
    assert "building" in out and "'--force'" in out and "'01'" in out
    assert cli.main(["report", "--quiet"]) == 0
    assert capfd.readouterr().out == ""                          # --quiet: the builder's progress too
    assert cli.main(["report", "--only", "99"]) == 2
    err = capfd.readouterr().err
    assert err.strip() == "zfcore report: error: no chapter 99"
    with pytest.raises(ValueError, match="no chapter 99"):
        cli.main(["report", "--only", "99", "--debug"])
    assert "Traceback (most recent call last): the builder" in capfd.readouterr().err


def test_threads_without_threadpoolctl_gives_command_line_advice(monkeypatch):
    from zfcore.analysis import parallel
    from zfcore.errors import ArgumentError
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)           # import threadpoolctl -> ImportError
    with pytest.raises(ArgumentError, match=r"or use one thread \(--threads 1 on the command line, "
                                            r"threads=1 in Python\)"):
        parallel.resolve(2)
