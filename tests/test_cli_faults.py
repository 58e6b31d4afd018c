"""Outputs that describe files that are not there (issue 17, kind 4): every output is checked
before any work, the CSV is written after the overlays it names, and Ctrl-C is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from spadecam import workflow
from spadecam.cli import main


@pytest.fixture
def a_file(tmp_path) -> Path:
    # a path under a regular file cannot be written, even by root (chmod would not stop root)
    f = tmp_path / "plain_file"
    f.write_text("x")
    return f


def test_score_with_unwritable_maps_writes_no_csv(tiny_model, tmp_path, a_file, capsys):
    model, folders = tiny_model
    csv = tmp_path / "rw" / "s.csv"
    code = main(["score", str(model), str(folders["test/good"]), "--out", str(csv),
                 "--maps", str(a_file / "ov"), "--no-progress"])
    assert code == 2
    assert not csv.exists() and not csv.parent.exists()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--maps" in err and "plain_file" in err and "is a file" in err


def test_score_interrupted_while_writing_overlays_leaves_no_csv(tiny_model, tmp_path,
                                                               monkeypatch, capsys):
    model, folders = tiny_model
    written: list[Path] = []
    real = workflow._write_png

    def interrupt_on_the_second(path, rgb):
        if written:
            raise KeyboardInterrupt
        real(path, rgb)
        written.append(path)

    monkeypatch.setattr(workflow, "_write_png", interrupt_on_the_second)
    csv = tmp_path / "s.csv"
    code = main(["score", str(model), str(folders["test/good"]), "--out", str(csv),
                 "--maps", str(tmp_path / "ov"), "--no-progress"])
    assert code == 130
    assert len(written) == 1 and written[0].exists()
    assert not csv.exists()  # the CSV comes last, after every overlay it names
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("spadecam: interrupted") and "Traceback" not in "\n".join(err)


def test_score_writes_the_csv_after_all_overlays(tiny_model, tmp_path, monkeypatch):
    model, folders = tiny_model
    order: list[str] = []
    real_png, real_text = workflow._write_png, workflow.atomic_write_text
    monkeypatch.setattr(workflow, "_write_png",
                        lambda p, rgb: (order.append("png"), real_png(p, rgb)))
    monkeypatch.setattr(workflow, "atomic_write_text",
                        lambda p, t: (order.append("csv"), real_text(p, t)))
    rows = workflow.score(model, [folders["test/good"]], tmp_path / "s.csv", tmp_path / "ov",
                          progress=False)
    assert order == ["png"] * len(rows) + ["csv"]
    assert all(Path(r["map"]).is_file() for r in rows)


def test_train_into_an_unwritable_place_fails_before_training(tiny_model, a_file, monkeypatch):
    _, folders = tiny_model

    def no_training(*_a, **_k):
        raise AssertionError("training started")

    monkeypatch.setattr("spadecam.detectors.train_vae", no_training)
    with pytest.raises(ValueError, match="--out .*plain_file.* cannot be written"):
        workflow.train(folders["train/good"], folders["train/defect"], a_file / "model",
                       image_size=16, latent_dim=4, epochs=1, progress=False)


def test_evaluate_and_reproduce_check_out_first(tiny_model, a_file, capsys):
    model, folders = tiny_model
    with pytest.raises(ValueError, match="--out .* cannot be written"):
        workflow.evaluate(model, folders["test/good"], folders["test/defect"],
                          out=a_file / "m.json", progress=False)
    code = main(["reproduce", "noisy-mnist", "--out", str(a_file / "run"), "--no-progress"])
    assert code == 2
    assert "--out" in capsys.readouterr().err


def test_ctrl_c_in_any_command_is_one_line(monkeypatch, capsys):
    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(workflow, "evaluate", interrupted)
    assert main(["evaluate", "m", "--normal", "a", "--anomaly", "b"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "spadecam: interrupted; outputs not yet written were not written"
