"""The command line's outputs: the output folder checked writable before any work, write errors named
by the user's path with nothing left behind, the files of one run written as a set that a concurrent
run never mixes with its own, interrupts after the write, bounded figures for many images, an output
folder never read as input, figures sized to their content, and the summaries recording every argument
that changes a result."""
import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("PIL")

from zfcore import cli, data, models
from zfcore import _io
from zfcore.cli import cmd_topk
from zfcore.cli import common as C

from test_cli import snapshot

REPO = Path(__file__).resolve().parents[1]
TOPK = ["topk", "--layer", "conv1", "conv3", "--k", "1", "--features", "0", "--limit", "10", "--quiet"]


def run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _no_scan(monkeypatch):
    calls = []

    def scan(*a, **k):
        calls.append(1)
        raise AssertionError("the scan ran")

    monkeypatch.setattr(cmd_topk, "_topk_run", scan)
    return calls


# --- the output folder is checked before any work ------------------------------------------------------
@pytest.mark.parametrize("code,reason", [(errno.EACCES, "Permission denied"),
                                         (errno.EROFS, "Read-only file system")])
@pytest.mark.parametrize("where", ["existing", "missing"])
def test_unwritable_out_refused_before_the_scan(tmp_path, out, capsys, monkeypatch, code, reason, where):
    """A folder where no file can be created (the OS's answer when creating one, as for a read-only
    folder or file system): one line naming the user's --out, before the scan; nothing left, and a
    folder made for the check removed again."""
    target = out if where == "existing" else out / "new" / "sub"
    real = tempfile.mkstemp

    def refused(*a, dir=None, **k):
        if dir is not None and Path(dir) == target:
            raise OSError(code, os.strerror(code), str(Path(dir) / ".tmpXYZ"))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    calls = _no_scan(monkeypatch)
    before = snapshot(out)
    rc, _, err = run(TOPK + ["--out", target], capsys)
    assert rc == 2 and calls == [] and len(err.strip().splitlines()) == 1, err
    assert err.strip() == f"zfcore topk: error: --out {target}: cannot write there ({reason})"
    assert ".tmp" not in err and snapshot(out) == before and not (out / "new").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_refused_before_the_scan(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        calls = _no_scan(monkeypatch)
        rc, _, err = run(TOPK + ["--out", ro / "sub"], capsys)
        assert rc == 2 and calls == [] and "cannot write there (Permission denied)" in err
        assert str(ro / "sub") in err and list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("argv", [["classify", "--test-index", "0"],
                                  ["project", "--test-index", "0", "--layer", "conv2"],
                                  ["occlusion", "--test-index", "0"], TOPK])
def test_every_command_probes_its_out(tmp_path, capsys, monkeypatch, argv):
    probed = []
    real = _io.probe_folder
    monkeypatch.setattr(C, "probe_folder", lambda folder: (probed.append(Path(folder)), real(folder)))
    target = tmp_path / "a" / "b"
    rc, _, err = run(argv + ["--out", target, "--quiet", "--force"], capsys)
    assert rc == 0, err
    assert probed == [target]
    names = sorted(p.name for p in target.iterdir())
    assert not any(n.startswith(".") for n in names), names      # no probe, temporary or lock left


# --- a write that fails: the user's path named, nothing left -------------------------------------------
def _full_disk(monkeypatch, which):
    """Writing fails with ENOSPC: the JSON/PNG through open(..., "wb"), or the .npz through numpy."""
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if which == "npz":
        monkeypatch.setattr(np, "savez_compressed", full)
        return
    real = open

    def fake_open(file, mode="r", *a, **k):
        if "w" in mode:
            full()
        return real(file, mode, *a, **k)

    monkeypatch.setattr(_io, "open", fake_open, raising=False)


@pytest.mark.parametrize("which,name", [("json", "topk.json"), ("npz", "topk.npz")])
def test_full_disk_names_the_file_and_leaves_nothing(tmp_path, out, capsys, monkeypatch, which, name):
    # an earlier run's files, replaced with --force: kept as they were when the write fails
    assert run(TOPK + ["--out", out], capsys)[0] == 0
    before = snapshot(out)
    new = tmp_path / "new" / "sub"
    _full_disk(monkeypatch, which)
    rc, _, err = run(TOPK + ["--out", out, "--force"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert err.strip() == (f"zfcore topk: error: --out {out}: cannot write {name} there (No space left on "
                           "device); nothing of this run was written")
    assert snapshot(out) == before
    rc, _, err = run(TOPK + ["--out", new], capsys)              # a folder made for the run: removed
    assert rc == 2 and f"--out {new}: cannot write {name} there" in err
    assert not (tmp_path / "new").exists()


def test_interrupt_while_writing_leaves_nothing(out, capsys, monkeypatch):
    real, calls = _io._put, []

    def put(tmp, payload):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(tmp, payload)

    monkeypatch.setattr(_io, "_put", put)
    before = snapshot(out)
    rc, _, err = run(["classify", "--test-index", "0", "--out", out, "--quiet"], capsys)
    assert rc == 130 and "interrupted; nothing was written" in err and snapshot(out) == before


# --- the files of one run are a set -----------------------------------------------------------------------
def _write_set(folder, run_id):
    o = C.Outputs(folder, True, ["r.json", "r.png", "r.npz"])
    o.add("r.json", {"run": run_id})
    o.add("r.png", f"run {run_id}".encode() * 2000)
    o.add("r.npz", {"run": np.full(50_000, run_id)})
    o.write()


def _which_runs(folder):
    with np.load(folder / "r.npz") as z:
        npz = set(np.unique(z["run"]).tolist())
    return (json.loads((folder / "r.json").read_text())["run"],
            (folder / "r.png").read_bytes().decode()[4:].split("run ")[0], npz)


def _check_one_run(folder):
    j, png, npz = _which_runs(folder)
    assert (str(j), {j}) == (png, npz), f"a mixed set: json {j}, png {png}, npz {npz}"
    assert sorted(p.name for p in folder.iterdir()) == ["r.json", "r.npz", "r.png"]


def test_concurrent_sets_never_mix_threads(tmp_path):
    folder = tmp_path / "o"
    for i in range(30):
        barrier, errors = threading.Barrier(2), []

        def go(run_id):
            try:
                barrier.wait()
                _write_set(folder, run_id)
            except BaseException as e:           # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=go, args=(2 * i + t,)) for t in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        _check_one_run(folder)


@pytest.mark.parametrize("step", ["probe", "write"])
def test_folder_removed_by_another_writer_is_made_again(tmp_path, monkeypatch, step):
    """Two runs into a missing --out both make it; one run's check removes the folder it made (still
    empty) just before the other creates its first file there. The other run makes it again and
    succeeds, instead of 'cannot write there'. The removal is staged at the other run's first file."""
    folder = tmp_path / "o"
    real, staged = tempfile.mkstemp, []

    def other_writer_cleans_up(*a, dir=None, **k):
        probing = str(k.get("prefix", "")).startswith(".zfcore-probe")
        if not staged and dir is not None and Path(dir) == folder and probing == (step == "probe"):
            staged.append(1)
            folder.rmdir()
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", other_writer_cleans_up)
    handler = signal.getsignal(signal.SIGINT)
    try:
        _write_set(folder, 7)        # in the main thread: leaves SIGINT ignored, as a command does
    finally:
        signal.signal(signal.SIGINT, handler)
    assert staged == [1]
    _check_one_run(folder)


def _racer(folder, run_id, start, done, rounds):
    for i in range(rounds):
        start.wait()
        _write_set(Path(folder), 100 * i + run_id)
        done.wait()


def test_concurrent_sets_never_mix_processes(tmp_path):
    ctx = multiprocessing.get_context("fork")
    rounds = 30
    start, done = ctx.Barrier(3), ctx.Barrier(3)
    procs = [ctx.Process(target=_racer, args=(str(tmp_path), r, start, done, rounds)) for r in (1, 2)]
    for p in procs:
        p.start()
    try:
        for _ in range(rounds):
            start.wait(timeout=60)
            done.wait(timeout=60)
            _check_one_run(tmp_path)
    finally:
        for p in procs:
            p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]


@pytest.mark.slow
def test_two_topk_runs_at_once_never_mix(tmp_path):
    """Two `zfcore topk --force` into one folder at once, features 0 1 against 2 3: topk.json and
    topk.npz always come from one run."""
    for _ in range(3):
        procs = [subprocess.Popen([sys.executable, "-m", "zfcore", "topk", "--layer", "conv1", "--k", "1",
                                   "--limit", "10", "--features", *f, "--force", "--quiet", "--out",
                                   str(tmp_path)], cwd=REPO, stderr=subprocess.PIPE, text=True)
                 for f in (["0", "1"], ["2", "3"])]
        assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
        s = json.loads((tmp_path / "topk.json").read_text())
        with np.load(tmp_path / "topk.npz") as z:
            assert [r["feature"] for r in s["results"]] == z["features"].tolist()


# --- an interrupt after the files are written ----------------------------------------------------------
def test_interrupt_after_the_write_is_ignored(out, capsys, monkeypatch):
    """Ctrl-C once the set is in place: the command ends normally (status 0, no message), the files
    whole; called in-process, the SIGINT handler is restored afterwards."""
    real = C.Outputs.write

    def write_then_ctrl_c(self):
        paths = real(self)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        return paths

    monkeypatch.setattr(C.Outputs, "write", write_then_ctrl_c)
    rc, stdout, err = run(["classify", "--test-index", "0", "--out", out], capsys)
    assert rc == 0 and err == "" and "wrote classify.json, classify.png" in stdout
    assert json.loads((out / "classify.json").read_text())["results"][0]["predicted"] == 9
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


SCRIPT = """
import os, signal, sys, time
from zfcore.cli import main
sys.argv = ["zfcore", "classify", "--test-index", "0", "--quiet", "--out", sys.argv[1]]
rc = main()
os.kill(os.getpid(), signal.SIGINT)       # Ctrl-C while the program exits
time.sleep(0.1)
sys.exit(rc)
"""


def test_interrupt_while_the_program_exits(tmp_path):
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "o")], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert sorted(f.name for f in (tmp_path / "o").iterdir()) == ["classify.json", "classify.png"]


def test_ctrl_c_right_after_wrote(tmp_path):
    """The program as a user runs it: SIGINT the moment it prints its last line."""
    p = subprocess.Popen([sys.executable, "-m", "zfcore", "classify", "--test-index", "0", "--out",
                          str(tmp_path / "o")], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in p.stdout:
        if line.startswith("wrote "):
            p.send_signal(signal.SIGINT)
            break
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0 and "Traceback" not in err and "KeyboardInterrupt" not in err, err


# --- many images --------------------------------------------------------------------------------------------
def test_classify_many_images_bounded_figure(tmp_path, capsys):
    from PIL import Image
    n = 150
    rc, _, err = run(["classify", "--test-index", *range(n), "--out", tmp_path, "--quiet"], capsys)
    assert rc == 0, err
    s = json.loads((tmp_path / "classify.json").read_text())
    x, y = data.load_dataset("test", limit=n)
    net = models.load_model()
    want = np.argmax(net(x), axis=1)
    assert [r["predicted"] for r in s["results"]] == want.tolist()          # every image listed
    assert s["figure"] == {"file": "classify.png", "images": n, "images_shown": 64}
    with Image.open(tmp_path / "classify.png") as im:
        w, h = im.size
    assert w <= 1700 and h <= 2100, (w, h)                                   # 8 x 8 panels at most


def test_classify_loads_files_a_batch_at_a_time(tmp_path, capsys, monkeypatch):
    from PIL import Image
    x, _ = data.load_dataset("test", limit=70)
    files = []
    for i, a in enumerate(x):
        files.append(tmp_path / f"{i:03d}.png")
        Image.fromarray((a[0] * 255).round().astype(np.uint8)).save(files[-1])
    loaded, real = [], C.load_inputs
    monkeypatch.setattr(C, "load_inputs", lambda args: (loaded.append(len(args.images or [])), real(args))[1])
    rc, _, err = run(["classify", *files, "--out", tmp_path / "o", "--quiet"], capsys)
    assert rc == 0, err
    assert max(loaded) <= 64 and sum(loaded) == 70
    s = json.loads((tmp_path / "o" / "classify.json").read_text())
    assert [r["input"] for r in s["results"]] == [str(f) for f in files]


# --- an output folder is never read as input ----------------------------------------------------------------
def test_topk_out_inside_images_refused(tmp_path, capsys, monkeypatch):
    from PIL import Image
    x, _ = data.load_dataset("test", limit=3)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, a in enumerate(x):
        Image.fromarray((a[0] * 255).round().astype(np.uint8)).save(imgs / f"{i}.png")
    calls = _no_scan(monkeypatch)
    before = snapshot(imgs)
    for o in (imgs, imgs / "top", imgs / "." / "top" / ".." / "top"):
        rc, _, err = run(["topk", "--layer", "conv1", "--k", "1", "--images", imgs, "--out", o], capsys)
        assert rc == 2 and f"--out {o}: within the --images folder {imgs}" in err, err
    assert calls == [] and snapshot(imgs) == before


# --- figures ---------------------------------------------------------------------------------------------
def _figures(monkeypatch):
    """The figures the command draws, each drawn again on its own Agg canvas after it is saved."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    figs, real = [], C.png_bytes

    def keep(fig):
        png = real(fig)
        FigureCanvasAgg(fig).draw()
        figs.append(fig)
        return png

    monkeypatch.setattr(C, "png_bytes", keep)
    return figs


def _texts_inside(fig):
    """Every axes (with its title, labels and drawn tick labels) and the figure's title lie inside the
    figure: nothing clipped."""
    r = fig.canvas.get_renderer()
    box = fig.bbox
    for what, e in [(ax.get_title() or ax.get_ylabel(), ax.get_tightbbox(r)) for ax in fig.axes] + \
            [(t.get_text(), t.get_window_extent(r)) for t in fig.texts + [fig._suptitle] if t is not None]:
        assert box.x0 - 1 <= e.x0 and e.x1 <= box.x1 + 1 and box.y0 - 1 <= e.y0 and e.y1 <= box.y1 + 1, what


def test_project_figure_names_everything(tmp_path, capsys, monkeypatch):
    from PIL import Image
    x, _ = data.load_dataset("test", limit=1)
    f = tmp_path / "a-rather-long-file-name-of-an-ankle-boot-photo.png"
    Image.fromarray((x[0, 0] * 255).round().astype(np.uint8)).save(f)
    figs = _figures(monkeypatch)
    rc, _, err = run(["project", f, "--layer", "conv3", "--out", tmp_path / "o", "--quiet"], capsys)
    assert rc == 0, err
    r = json.loads((tmp_path / "o" / "project.json").read_text())["results"][0]
    assert r["figure"] == "00-a-rather-long-file-name-of-an-ankle-boot-photo.png"
    net = models.load_model()
    x1 = data.load_image(f, size=(28, 28), mode="L")
    act = net.forward(x1, upto="conv3")["conv3"][0]
    feature = int(np.argmax(act.max(axis=(1, 2))))
    fig = figs[0]
    title = fig._suptitle.get_text().replace("\n", "")
    assert f.name in title and f"conv3 feature {feature}" in title
    assert f"activation {act[feature].max():.4g}" in title
    assert any(ax.get_ylabel() == "projected value" for ax in fig.axes)       # a colour bar
    _texts_inside(fig)
    from matplotlib.transforms import Bbox
    w, h = fig.get_size_inches()
    assert w >= 4 and Bbox.union([ax.get_position() for ax in fig.axes]).height > 0.5


def test_topk_figure_rows_and_columns_named(tmp_path, capsys, monkeypatch):
    figs = _figures(monkeypatch)
    rc, _, err = run(["topk", "--layer", "conv1", "conv3", "--k", "2", "--features", "0", "1",
                      "--limit", "20", "--out", tmp_path, "--quiet"], capsys)
    assert rc == 0, err
    fig = figs[0]
    r = fig.canvas.get_renderer()
    axes = np.array(fig.axes).reshape(4, 4)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == [f"{layer}\nfeature {f}" for layer in ("conv1", "conv3")
                                                       for f in (0, 1)]
    assert [ax.get_title().split("\n")[0] for ax in axes[0]] == ["top 1", "its patch", "top 2", "its patch"]
    title = fig._suptitle.get_window_extent(r)
    for ax in axes[0]:
        assert not title.overlaps(ax.get_tightbbox(r)), "the title covers the first row"
    _texts_inside(fig)


# --- --force and the summaries ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv,names", [
    (["classify", "--test-index", "0"], ["classify.json", "classify.png"]),
    (["project", "--test-index", "0", "--layer", "conv2"], ["00-test-0.png", "project.json", "project.npz"]),
    (["occlusion", "--test-index", "0", "--size", "14", "--stride", "14"],
     ["occlusion.json", "occlusion.png"]),
    (TOPK, ["topk.json", "topk.npz", "topk.png"]),
])
def test_force_replaces_only_the_commands_files(out, capsys, argv, names):
    assert run(argv + ["--out", out, "--quiet"], capsys)[0] == 0
    for n in ("other.png", "project.json.bak", "01-test-1.png"):
        (out / n).write_text("the user's")
    for n in names:
        (out / n).write_text("an older run")
    before = snapshot(out)
    assert run(argv + ["--out", out, "--quiet", "--force"], capsys)[0] == 0
    after = snapshot(out)
    assert sorted(after) == sorted(before)                                    # nothing added or removed
    assert sorted(k for k in after if after[k] != before[k]) == sorted(names)


def test_summaries_record_every_argument(tmp_path, capsys):
    rc, _, _ = run(["classify", "--test-index", "3", "4", "--top", "2", "--seed", "7",
                    "--out", tmp_path / "c", "--quiet"], capsys)
    a = json.loads((tmp_path / "c" / "classify.json").read_text())["arguments"]
    assert rc == 0 and (a["test_index"], a["top"], a["seed"], a["model"]) == ([3, 4], 2, 7, "fmnist_zf")
    rc, _, _ = run(["project", "--test-index", "3", "--layer", "conv2", "--feature", "5", "--rule", "guided",
                    "--out", tmp_path / "p", "--quiet"], capsys)
    a = json.loads((tmp_path / "p" / "project.json").read_text())["arguments"]
    assert rc == 0 and (a["layer"], a["feature"], a["rule"], a["test_index"]) == ("conv2", 5, "guided", [3])
    rc, _, _ = run(["topk", "--layer", "conv1", "--k", "2", "--features", "3", "--limit", "30",
                    "--batch-size", "7", "--threads", "1", "--rule", "gradient", "--out", tmp_path / "t",
                    "--quiet"], capsys)
    s = json.loads((tmp_path / "t" / "topk.json").read_text())
    a = s["arguments"]
    got = tuple(a[k] for k in ("layer", "k", "features", "limit", "batch_size", "threads", "rule"))
    assert rc == 0 and got == (["conv1"], 2, [3], 30, 7, 1, "gradient")
    for s in (tmp_path / d for d in "cpt"):
        keys = set(json.loads(next(s.glob("*.json")).read_text())["arguments"])
        assert not keys & {"out", "force", "quiet", "debug", "func", "command"}


# --- the library's atomic writes ------------------------------------------------------------------------
def test_atomic_write_failure_names_the_file_asked_for(tmp_path, monkeypatch):
    """A full disk while a weights file is saved: the OSError (same type and errno) names that file,
    not the temporary, and no temporary is left."""
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    params, _ = models.load_weights(models.default_weights_path("fmnist_zf"))
    monkeypatch.setattr(np, "savez_compressed", full)
    with pytest.raises(OSError) as e:
        models.save_weights(params, tmp_path / "w.npz", "fmnist_zf")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "w.npz")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    def refused(*a, **k):
        raise PermissionError(13, "Permission denied", "/x/.a.png.tmp")

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(PermissionError) as e:
        _io.write_bytes(tmp_path / "sub" / "a.png", b"x")
    assert e.value.filename == str(tmp_path / "sub" / "a.png")


def test_max_upscale_lets_small_images_in(tmp_path, capsys):
    """A 5x5 image is refused for the 28-pixel model by default (enlarged 5.6 times); --max-upscale 6
    and --max-upscale 0 (no limit) take it, in classify and in a topk folder scan, and the summaries
    record the scale and the limit."""
    from PIL import Image

    folder = tmp_path / "small"
    folder.mkdir()
    Image.new("L", (5, 5), 200).save(folder / "a.png")
    Image.new("L", (28, 28), 90).save(folder / "b.png")
    rc, _, err = run(["classify", folder / "a.png", "--out", tmp_path / "c0", "--quiet"], capsys)
    assert rc == 2 and "--max-upscale X" in err
    for limit in ("6", "0"):
        rc, _, err = run(["classify", folder / "a.png", "--max-upscale", limit, "--out", tmp_path / f"c{limit}",
                          "--quiet"], capsys)
        assert rc == 0, err
        summary = json.loads((tmp_path / f"c{limit}" / "classify.json").read_text())
        assert summary["inputs"][0]["scale"] == pytest.approx(28 / 5)
    rc, _, err = run(["topk", "--layer", "conv1", "--k", "2", "--features", "0", "--images", folder,
                      "--out", tmp_path / "t0", "--quiet"], capsys)
    assert rc == 2 and "only 1 images" in err                 # a.png skipped: one image left for k=2
    rc, _, err = run(["topk", "--layer", "conv1", "--k", "2", "--features", "0", "--images", folder,
                      "--max-upscale", "6", "--out", tmp_path / "t6", "--quiet"], capsys)
    assert rc == 0, err
    summary = json.loads((tmp_path / "t6" / "topk.json").read_text())
    assert summary["inputs"]["count"] == 2 and summary["inputs"]["max_upscale"] == 6
    assert summary["inputs"]["skipped"]["count"] == 0 and summary["arguments"]["max_upscale"] == 6
