"""Outputs that describe files that are not there: every output is checked
before any work, the CSV is written after the overlays it names, and Ctrl-C is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from spadecam import workflow
from spadecam.cli import main
from spadecam.deploy import outputs


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
    """Overlays are staged and moved into place once every image was scored (scored
    in chunks with flat memory): an interruption leaves neither the CSV nor any overlay."""
    model, folders = tiny_model
    written: list[Path] = []
    real = outputs.write_png

    def interrupt_on_the_second(path, rgb):
        if written:
            raise KeyboardInterrupt
        real(path, rgb)
        written.append(path)

    monkeypatch.setattr(outputs, "write_png", interrupt_on_the_second)
    csv = tmp_path / "s.csv"
    code = main(["score", str(model), str(folders["test/good"]), "--out", str(csv),
                 "--maps", str(tmp_path / "ov"), "--no-progress"])
    assert code == 130
    assert len(written) == 1 and not written[0].exists()  # it was staged, then removed
    assert not (tmp_path / "ov").exists()  # nor the folder it created
    assert not csv.exists()  # the CSV comes last, after every overlay it names
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("spadecam: interrupted") and "Traceback" not in "\n".join(err)


def test_score_writes_the_csv_after_all_overlays(tiny_model, tmp_path, monkeypatch):
    model, folders = tiny_model
    order: list[str] = []
    real_png, real_text = outputs.write_png, outputs.atomic_write_text
    monkeypatch.setattr(outputs, "write_png",
                        lambda p, rgb: (order.append("png"), real_png(p, rgb)))
    monkeypatch.setattr(outputs, "atomic_write_text",
                        lambda p, t: (order.append("csv"), real_text(p, t)))
    rows = workflow.score(model, [folders["test/good"]], tmp_path / "s.csv", tmp_path / "ov",
                          progress=False)
    assert order == ["png"] * len(rows) + ["csv"]
    assert all(Path(r["map"]).is_file() for r in rows)


def test_train_into_an_unwritable_place_fails_before_training(tiny_model, a_file, monkeypatch):
    _, folders = tiny_model

    def no_training(*_a, **_k):
        raise AssertionError("training started")

    monkeypatch.setattr("spadecam.detectors.spade.train_vae", no_training)  # what SPADE.fit calls
    with pytest.raises(ValueError, match="--out .*plain_file.* cannot be written"):
        workflow.train(folders["train/good"], folders["train/defect"], a_file / "model",
                       image_size=16, latent_dim=4, epochs=1, progress=False, recipe="spadecam")


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
    assert err[-1] == "spadecam: interrupted; no output was left half-written"


# --------------------------------------------------------------------------- options


def test_score_and_evaluate_keep_the_stored_precision(tiny_model, tmp_path, cpu_bf16, capsys):
    # `score` / `evaluate` passed --precision auto whatever the user said, so a model trained
    # with --precision 32 was scored in bf16 on a bf16 CPU
    import csv
    import json
    import shutil

    import numpy as np

    from spadecam import SPADE

    model, folders = tiny_model
    m32 = tmp_path / "m32"
    shutil.copytree(model, m32)
    cfg = json.loads((m32 / "config.json").read_text())
    cfg["detector"]["params"]["precision"] = "32"
    (m32 / "config.json").write_text(json.dumps(cfg))
    cpu_bf16(True, True)  # a CPU where auto would score in bf16
    out = tmp_path / "s.csv"
    assert main(["score", str(m32), str(folders["test/good"]), "--out", str(out),
                 "--no-progress"]) == 0
    assert "scoring 32 (stored in the model directory)" in capsys.readouterr().err
    with open(out) as f:
        got = np.array([float(r["score"]) for r in csv.DictReader(f)])
    rows = workflow.score(m32, [folders["test/good"]], progress=False, precision="32")
    np.testing.assert_array_equal(got, np.array([float(r['score']) for r in rows]))
    bf16 = workflow.score(m32, [folders["test/good"]], progress=False, precision="bf16")
    assert [r["score"] for r in bf16] != [r["score"] for r in rows]
    assert SPADE.load(m32).precision == "32"
    # evaluate too, and an explicit --precision still wins
    metrics = tmp_path / "m.json"
    assert main(["evaluate", str(m32), "--normal", str(folders["test/good"]), "--anomaly",
                 str(folders["test/defect"]), "--out", str(metrics), "--no-progress"]) == 0
    assert json.loads(metrics.read_text())["precision"] == "32"
    assert main(["evaluate", str(m32), "--normal", str(folders["test/good"]), "--anomaly",
                 str(folders["test/defect"]), "--precision", "bf16", "--no-progress"]) == 0
    assert '"precision": "bf16"' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "option"),
    [(["elpv", "--known", "3"], "--known"), (["elpv", "--data-dir", "d"], "--data-dir"),
     (["elpv", "--download"], "--download"), (["elpv", "--no-figures"], "--no-figures"),
     (["noisy-mnist", "--eval-split", "val"], "--eval-split"),
     (["noisy-mnist", "--protocols", "dra"], "--protocols"),
     # the pretrained recipe (elpv's default) has no VAE and runs in fp32, one process
     (["elpv", "--ablations"], "--ablations"),
     (["noisy-mnist", "--recipe", "pretrained", "--precision", "bf16"], "--precision"),
     (["noisy-mnist", "--recipe", "pretrained", "--report", "r.html"], "--report")],
)
def test_reproduce_refuses_options_its_benchmark_would_ignore(argv, option):
    # reproduce elpv silently ignored all of these, noisy-mnist --eval-split; refused at
    # parse time, before torch is imported and before any work (both run on
    # one runner, so elpv takes --precision and the distributed options)
    import subprocess
    import sys

    code = ("import sys\nfrom spadecam.cli import main\n"
            f"try:\n    main(['reproduce', *{argv!r}])\nexcept SystemExit as e:\n"
            "    print('exit', e.code)\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["exit", "2", "False"], out
    assert f"does not take {option}" in out.stderr


# --------------------------------------------------------------------------- masks


def test_evaluate_names_anomalies_without_a_mask(tiny_model, tmp_path, capsys):
    # one anomalous image without a mask was silently left out of pixel AUROC
    import json
    import shutil

    model, folders = tiny_model
    masks = tmp_path / "masks"
    shutil.copytree(folders["test/masks"], masks)
    first = sorted(masks.iterdir())[0]
    first.unlink()
    stem = first.name.replace("_mask", "")
    out = tmp_path / "m.json"
    assert main(["evaluate", str(model), "--normal", str(folders["test/good"]), "--anomaly",
                 str(folders["test/defect"]), "--masks", str(masks), "--out", str(out),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "spadecam: warning: --masks: 1 anomalous image(s) have no mask" in err
    assert stem in err
    m = json.loads(out.read_text())
    assert [Path(p).name for p in m["pixel_auroc_missing_masks"]] == [stem]
    n_normal = len(list(folders["test/good"].iterdir()))
    n_anomaly = len(list(folders["test/defect"].iterdir()))
    assert m["n_pixel_images"] == n_normal + n_anomaly - 1


def test_preprocessing_without_channels_is_one_error(tiny_model, tmp_path, capsys):
    import json
    import shutil

    model, folders = tiny_model
    m = tmp_path / "m"
    shutil.copytree(model, m)
    cfg = json.loads((m / "config.json").read_text())
    del cfg["preprocessing"]["channels"]
    (m / "config.json").write_text(json.dumps(cfg))
    assert main(["score", str(m), str(folders["test/good"]), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "config.json: preprocessing.channels is missing" in err


def test_benchmark_reconstruct_leaves_the_callers_vae_in_its_mode():
    import torch

    from spadecam.bench.runner import reconstruct
    from spadecam.models import ConvVAE, VAEConfig

    vae = ConvVAE(VAEConfig(image_size=16, latent_dim=2, channels=(4,))).train()
    reconstruct(vae, torch.zeros(3, 1, 16, 16, dtype=torch.uint8))
    assert all(m.training for m in vae.modules())


def test_score_in_chunks_gives_the_same_csv_and_writes_nothing_on_a_late_fault(
        tiny_model, tmp_path, monkeypatch):
    """spadecam score reads, scores and draws SCORE_CHUNK images at a time (flat memory) yet
    writes nothing before every image is scored: chunks of 2 give the one-chunk CSV and
    overlays; a non-finite score in the last chunk leaves no overlay and no CSV."""

    import numpy as np

    from spadecam.deploy.torch_inferencer import TorchInferencer
    from spadecam.exceptions import NonFiniteScoreError

    model, folders = tiny_model
    inputs = [folders["test/good"], folders["test/defect"]]
    whole = workflow.score(model, inputs, tmp_path / "a.csv", tmp_path / "ov_a", progress=False)
    monkeypatch.setattr(outputs, "SCORE_CHUNK", 2)
    chunked = workflow.score(model, inputs, tmp_path / "b.csv", tmp_path / "ov_b", progress=False)
    # the same to fp32 rounding (the networks' kernels add in another order for other batch
    # sizes), the same decisions and overlays (up to a rounding step of the colour)
    assert [r["score"] for r in chunked] == pytest.approx([r["score"] for r in whole], rel=1e-5)
    assert [r["label"] for r in chunked] == [r["label"] for r in whole]
    from PIL import Image

    for a, b in zip(whole, chunked):
        pa, pb = (np.asarray(Image.open(r["map"])).astype(int) for r in (a, b))
        assert np.abs(pa - pb).max() <= 1
    real = TorchInferencer.score
    calls = []

    def nan_in_the_last_chunk(self, x, paths, progress=False):
        s, m = real(self, x, paths, progress)
        calls.append(len(x))
        if sum(calls) == len(whole):  # the last chunk
            raise NonFiniteScoreError("nan", [len(x) - 1])
        return s, m

    monkeypatch.setattr(TorchInferencer, "score", nan_in_the_last_chunk)
    with pytest.raises(NonFiniteScoreError) as err:
        workflow.score(model, inputs, tmp_path / "c.csv", tmp_path / "ov_c", progress=False)
    assert err.value.indices == [len(whole) - 1]  # an index into all the inputs
    assert len(calls) == 3 and not (tmp_path / "c.csv").exists()
    assert not list((tmp_path / "ov_c").rglob("*"))


def test_reproduce_takes_each_benchmarks_default_recipe():
    """elpv runs the pretrained recipe (SPADE()'s default) unless told; noisy-mnist keeps the
    from-scratch one, which won on its validation split."""
    from spadecam.cli import _build_parser, _check_reproduce_options

    parser = _build_parser()
    for argv, want in ((["elpv"], "pretrained"), (["noisy-mnist"], "spadecam"),
                       (["elpv", "--recipe", "spadecam"], "spadecam"),
                       (["noisy-mnist", "--recipe", "paper"], "paper")):
        args = parser.parse_args(["reproduce", *argv])
        _check_reproduce_options(parser, args)
        assert args.recipe == want, argv
