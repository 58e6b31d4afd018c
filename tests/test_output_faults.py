"""Outputs are all or nothing: Ctrl-C while the overlays move into place, or a full disk in any
command, leaves either the complete result or nothing new (the files it would have replaced
as they were, no folder it created), and a failed write names the option and the file."""

from __future__ import annotations

import errno
import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from spadecam import _fs
from spadecam.cli import main

STAGED = ".spadecam-staging-"
FULL = "No space left on device (errno 28)"


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder under ``root``, hidden ones included."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def run(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip().splitlines()[-1]


def score_argv(tiny_model, out: Path) -> list:
    model, folders = tiny_model
    return ["score", model, folders["test/good"], folders["test/defect"], "--out",
            out / "s.csv", "--maps", out / "ov", "--no-progress"]


def into_place(src: Path, dst: Path) -> bool:
    """A rename that puts an output in place: a staged overlay, or the CSV's temp file."""
    return (STAGED in str(src) and STAGED not in str(dst)) or dst.name == "s.csv"


# --------------------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("k", [1, 4, 7])
def test_ctrl_c_while_outputs_move_into_place_leaves_all_or_nothing(
        tiny_model, tmp_path, monkeypatch, capsys, k, when):
    """Ctrl-C at the k-th rename into place (6 overlays, then the CSV: k = 7), just before or
    just after it: exit 130, no overlay and no CSV left, the files that were there before
    (replaced ones, older overlays) back as they were, no hidden file left."""
    out = tmp_path / "out"
    out.mkdir()
    real = os.replace
    calls: list[Path] = []

    def interrupting(src, dst, *a, **kw):
        hit = into_place(Path(src), Path(dst))
        if hit:
            calls.append(Path(dst))
        if hit and len(calls) == k and when == "before":
            raise KeyboardInterrupt
        real(src, dst, *a, **kw)
        if hit and len(calls) == k:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:  # into nothing: nothing is left, not even the folders
        m.setattr(os, "replace", interrupting)
        assert run(score_argv(tiny_model, out), capsys)[0] == 130
    assert len(calls) == k
    assert tree(out) == {}
    # over older outputs: every one comes back (an overlay that would be replaced, the CSV)
    assert run(score_argv(tiny_model, out), capsys)[0] == 0
    overlays = sorted((out / "ov").rglob("*.png"))
    assert len(overlays) == 6
    for p in overlays[::2]:
        p.write_bytes(b"older overlay " + p.name.encode())
    for p in overlays[1::2]:
        p.unlink()  # these are new ones in the next run
    (out / "s.csv").write_text("older csv\n")
    (out / "s.csv").chmod(0o600)
    before = tree(out)
    calls.clear()
    with monkeypatch.context() as m:
        m.setattr(os, "replace", interrupting)
        code, err = run(score_argv(tiny_model, out), capsys)
    assert code == 130 and err.startswith("spadecam: interrupted")
    assert tree(out) == before
    assert (out / "s.csv").stat().st_mode & 0o777 == 0o600


def test_a_real_sigint_during_the_overlay_commit_leaves_nothing(tiny_model, tmp_path):
    """A real SIGINT, sent while the second overlay moves into place, in a real process:
    exit 130, no overlay, no CSV, no folder."""
    out = tmp_path / "out"
    out.mkdir()
    argv = [str(a) for a in score_argv(tiny_model, out)]
    script = f"""
import os, signal, sys
# Python's own Ctrl-C handler, as in an interactive run (a shell's background job starts
# with SIGINT ignored, and an ignored interrupt stays ignored)
signal.signal(signal.SIGINT, signal.default_int_handler)
real, seen = os.replace, []

def replace(src, dst, *a, **kw):
    if {STAGED!r} in str(src) and {STAGED!r} not in str(dst):
        seen.append(dst)
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGINT)
    return real(src, dst, *a, **kw)

os.replace = replace
from spadecam.cli import main
code = main({argv!r})
print("moved", len(seen))
sys.exit(code)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("spadecam: interrupted")
    assert tree(out) == {}


@pytest.fixture
def sigint_handler():
    """Set SIGINT's handler for a test (a shell starts background jobs with it ignored) and
    put the one found back afterwards."""
    found = signal.getsignal(signal.SIGINT)
    yield lambda handler: signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGINT, found)


def test_the_interrupt_held_back_during_a_commit_is_delivered_afterwards(sigint_handler):
    sigint_handler(signal.default_int_handler)  # Python's own, as in an interactive run
    with pytest.raises(KeyboardInterrupt):
        with _fs.interrupts_held() as held:
            signal.raise_signal(signal.SIGINT)
            assert held.pending  # recorded, not raised inside the block
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_interrupt_stays_ignored_while_held(sigint_handler):
    """Under nohup or as a shell's background job SIGINT is ignored: holding it must not
    turn it into a pending stop."""
    sigint_handler(signal.SIG_IGN)
    with _fs.interrupts_held() as held:
        signal.raise_signal(signal.SIGINT)
        assert not held.pending
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


# --------------------------------------------------------------------------- full disk


@pytest.fixture
def full_disk(monkeypatch):
    """full_disk(root, match="", after=0): every file opened for writing under ``root``
    whose name contains ``match`` fails at its first write with ENOSPC, once ``after`` such
    files were written fine (reads and other files are untouched); a new call replaces the
    previous one."""
    real_open = io.open

    def install(root: Path, match: str = "", after: int = 0) -> list[str]:
        written: list[str] = []

        class Full:
            def __init__(self, f):
                self._f = f

            def write(self, _data):
                raise OSError(errno.ENOSPC, "No space left on device")

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._f.close()

            def __getattr__(self, name):
                return getattr(self._f, name)

        def fake_open(file, mode="r", *a, **kw):
            f = real_open(file, mode, *a, **kw)
            name = os.fspath(file) if isinstance(file, (str, os.PathLike)) else ""
            if (any(c in mode for c in "wax+") and isinstance(name, str)
                    and Path(name).is_relative_to(root) and match in Path(name).name):
                written.append(name)
                if len(written) > after:
                    return Full(f)
            return f

        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr("builtins.open", fake_open)
        return written

    return install


def test_a_full_disk_in_score_names_maps_and_the_file_and_leaves_nothing(
        tiny_model, tmp_path, full_disk, capsys):
    model, folders = tiny_model
    maps, csv = tmp_path / "new" / "ov", tmp_path / "new2" / "s.csv"
    full_disk(tmp_path)
    code, err = run(["score", model, folders["test/good"], "--out", csv, "--maps", maps,
                     "--no-progress"], capsys)
    assert code == 2
    assert err.startswith(f"spadecam: error: --maps {maps}: cannot write {maps}/"), err
    assert err.endswith(f".png: {FULL}") and STAGED not in err
    assert tree(tmp_path) == {}  # neither the CSV nor the folders it created


def test_a_full_disk_at_the_csv_takes_the_overlays_back(tiny_model, tmp_path, full_disk,
                                                        capsys):
    argv = score_argv(tiny_model, tmp_path / "out")
    (tmp_path / "out" / "ov").mkdir(parents=True)
    full_disk(tmp_path, match="s.csv")
    code, err = run(argv, capsys)
    assert code == 2
    assert err == f"spadecam: error: --out {tmp_path / 'out' / 's.csv'} cannot be written: {FULL}"
    assert tree(tmp_path) == {"out": None, "out/ov": None}  # the folders that were there


def test_a_full_disk_in_train_names_out_and_leaves_the_old_model_or_nothing(
        tiny_model, tmp_path, full_disk, capsys):
    _, folders = tiny_model
    argv = ["train",
        "--recipe", "spadecam", "--normal", folders["train/good"], "--anomaly", folders["train/defect"],
            "--image-size", "16", "--latent-dim", "4", "--batch-size", "8", "--epochs", "1",
            "--no-progress"]
    new = tmp_path / "models" / "m"
    full_disk(tmp_path)
    code, err = run([*argv, "--out", new], capsys)
    assert code == 2
    assert err.startswith(f"spadecam: error: --out {new}: cannot write {new}/"), err
    assert err.endswith(f".safetensors: {FULL}") and STAGED not in err
    assert tree(tmp_path) == {}
    # over an existing model, the disk full at its second file: the old model stays whole
    old = Path(shutil.copytree(tiny_model[0], tmp_path / "old"))
    before = tree(old)
    full_disk(tmp_path, after=1)
    code, err = run([*argv, "--out", old], capsys)
    assert code == 2 and err.startswith(f"spadecam: error: --out {old}: cannot write {old}/")
    assert tree(old) == before


def test_a_full_disk_in_evaluate_names_the_option_and_leaves_nothing(
        tiny_model, tmp_path, full_disk, capsys):
    model, folders = tiny_model
    argv = ["evaluate", model, "--normal", folders["test/good"], "--anomaly",
            folders["test/defect"], "--no-progress"]
    report, out = tmp_path / "r" / "report.html", tmp_path / "o" / "m.json"
    full_disk(tmp_path, match="report.html")
    code, err = run([*argv, "--report", report, "--out", out], capsys)
    assert code == 2 and err == f"spadecam: error: --report {report} cannot be written: {FULL}"
    assert tree(tmp_path) == {}
    # the disk full at --out, after the report was written: the report is taken back
    full_disk(tmp_path, match="m.json")
    code, err = run([*argv, "--report", report, "--out", out], capsys)
    assert code == 2 and err == f"spadecam: error: --out {out} cannot be written: {FULL}"
    assert tree(tmp_path) == {}


def test_a_full_disk_in_export_names_out_and_leaves_nothing(tiny_model, tmp_path, full_disk,
                                                            capsys, monkeypatch):
    # the real export's graph (slow) is not what is tried here: the file it writes is
    from spadecam.deploy import onnx_export

    monkeypatch.setattr(onnx_export, "export_onnx",
                        lambda _model, out: _fs.atomic_write_bytes(out, b"onnx" * 1000))
    out = tmp_path / "new" / "m.onnx"
    full_disk(tmp_path)
    code, err = run(["export", tiny_model[0], "--out", out], capsys)
    assert code == 2 and err == f"spadecam: error: --out {out} cannot be written: {FULL}"
    assert tree(tmp_path) == {}


def test_an_api_write_error_is_an_oserror_naming_the_file(tmp_path, full_disk):
    full_disk(tmp_path)
    with pytest.raises(OSError) as e:
        _fs.atomic_write_text(tmp_path / "a" / "x.txt", "x")
    assert str(e.value) == f"cannot write {tmp_path / 'a' / 'x.txt'}: {FULL}"
    assert e.value.errno == errno.ENOSPC
    assert tree(tmp_path) == {"a": None}  # outside a command: only the temp file goes


def test_score_onnx_is_all_or_nothing_too(tmp_path, full_disk, capsys, monkeypatch):
    # `score --onnx` writes through the same steps (staged overlays, then the CSV); the graph
    # is not what is tried here, so a stand-in scores three blank images
    import numpy as np

    from spadecam.deploy import onnx_inferencer, outputs

    def score_onnx(_onnx, paths, out, maps, log=None):
        names = outputs.map_names([Path(p) for p in paths])
        scores = outputs.score_with_overlays(
            lambda chunk: [np.zeros((1, 8, 8), np.float32) for _ in chunk],
            lambda x, chunk: (np.zeros(len(x)), [np.ones((8, 8)) for _ in x]),
            [Path(p) for p in paths], names, maps, 1.0)
        rows = outputs.score_rows([Path(p) for p in paths], scores, 0.5, maps, names)
        outputs.write_csv(out, rows)
        return rows

    monkeypatch.setattr(onnx_inferencer, "score_onnx", score_onnx)
    out = tmp_path / "out"
    full_disk(tmp_path, match="s.csv")
    code, err = run(["score", "--onnx", "m.onnx", "a.png", "b.png", "c.png", "--out",
                     out / "s.csv", "--maps", out / "ov"], capsys)
    assert code == 2 and err == f"spadecam: error: --out {out / 's.csv'} cannot be written: {FULL}"
    assert tree(tmp_path) == {}


def test_a_full_disk_in_reproduce_names_out_and_keeps_what_it_wrote(tmp_path, full_disk,
                                                                     capsys, monkeypatch):
    # a benchmark's finished parts are kept (it undoes nothing); the error names --out
    from spadecam.bench import elpv

    def run_elpv(out_dir, **_kw):
        _fs.atomic_write_text(Path(out_dir) / "seed0.csv", "finished\n")
        _fs.atomic_write_text(Path(out_dir) / "table.md", "| table |\n")

    monkeypatch.setattr(elpv, "run_elpv", run_elpv)
    out = tmp_path / "run"
    full_disk(tmp_path, match="table.md")
    code, err = run(["reproduce", "elpv", "--out", out, "--no-progress"], capsys)
    assert code == 2
    assert err == f"spadecam: error: --out {out}: cannot write {out / 'table.md'}: {FULL}"
    assert tree(tmp_path) == {"run": None, "run/seed0.csv": b"finished\n"}


def test_the_api_score_is_all_or_nothing_too(tiny_model, tmp_path, full_disk):
    from spadecam import workflow

    model, folders = tiny_model
    full_disk(tmp_path, match="s.csv")
    with pytest.raises(_fs.WriteError, match="--out .*s.csv cannot be written"):
        workflow.score(model, [folders["test/good"]], tmp_path / "o" / "s.csv",
                       tmp_path / "ov", progress=False)
    assert tree(tmp_path) == {}
