"""What spadecam promises about inputs and outputs (README, "Guarantees"), tried as a new user
would: through the CLI on small generated folders, one test per promise.

Each test started as a fault found this way: an input silently dropped or misread,
a non-finite number passed on, a side effect on the caller, two rules for one decision, an
output that could not be used.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _own_images import make_folders, normal_image, save
from spadecam import SPADE, workflow
from spadecam.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")

QUICK = ["--recipe", "spadecam",
         "--image-size", "16", "--latent-dim", "4", "--batch-size", "8", "--no-progress"]


def run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def strict_json(text: str):
    def refuse(token):
        raise ValueError(f"not RFC 8259 JSON: {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def model(tiny_model, tmp_path):
    """A private copy of the session's tiny model (tests may edit its config)."""
    return Path(shutil.copytree(tiny_model[0], tmp_path / "model"))


@pytest.fixture
def umask():
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --------------------------------------------------------------------------- inputs


def test_inputs_a_dangling_symlink_is_named_and_nothing_is_written(model, tmp_path, capsys):
    n = tmp_path / "n"
    save(n / "a.png", normal_image(np.random.default_rng(0)))
    (n / "dangling.png").symlink_to(tmp_path / "missing.png")  # was skipped, exit 0
    code, _, err = run(["score", model, n, "--out", tmp_path / "s.csv"], capsys)
    assert code == 2 and "dangling.png: broken symbolic link" in err
    assert not (tmp_path / "s.csv").exists()


def test_inputs_are_read_as_displayed_for_images_and_masks(model, tmp_path, capsys):
    rng = np.random.default_rng(1)
    picture = normal_image(rng, 48)[:, :30].copy()  # 30 wide, 48 high as displayed
    picture[4:14, 4:14] = 230  # a defect at the top left as displayed
    stored = np.rot90(picture)  # as a camera would store it: 48 wide, 30 high
    shown_mask = np.zeros_like(picture)
    shown_mask[4:14, 4:14] = 255
    (tmp_path / "bad").mkdir()
    for name, array, orientation in [("phone", stored, 6), ("upright", picture, 1)]:
        im = Image.fromarray(np.ascontiguousarray(array))
        exif = im.getexif()
        exif[0x0112] = orientation
        im.save(tmp_path / "bad" / f"{name}.png", exif=exif)
    rows = workflow.score(model, [tmp_path / "bad"], progress=False)
    assert rows[0]["path"].endswith("phone.png") and rows[1]["path"].endswith("upright.png")
    assert rows[0]["score"] == rows[1]["score"]  # was read unrotated: another score
    # a mask drawn on the displayed picture fits it (it was refused as the wrong size)
    save(tmp_path / "masks" / "phone_mask.png", shown_mask)
    save(tmp_path / "masks" / "upright_mask.png", shown_mask)
    good = make_folders(tmp_path / "g", n_normal=0, n_anomaly=0, n_test=2)["test/good"]
    m = workflow.evaluate(model, good, tmp_path / "bad", tmp_path / "masks", progress=False)
    assert m["n_pixel_images"] == 4


def test_inputs_grey_palette_pngs_train_beside_grey_ones(tmp_path, capsys):
    rng = np.random.default_rng(2)
    for i in range(6):
        save(tmp_path / "good" / f"l{i}.png", normal_image(rng))
        Image.fromarray(normal_image(rng)).convert("P").save(tmp_path / "good" / f"p{i}.png")
        x = normal_image(rng)
        x[8:16, 8:16] = 230
        save(tmp_path / "bad" / f"b{i}.png", x)
    code, out, err = run(["train", "--normal", tmp_path / "good", "--anomaly", tmp_path / "bad",
                          "--out", tmp_path / "m", *QUICK, "--epochs", "1"], capsys)
    assert code == 0, err  # was "mixed channel counts"
    assert "1 channel(s) (grey)" in out
    assert SPADE.load(tmp_path / "m").preprocessing_["channels"] == 1


def test_inputs_a_folder_tree_is_scored_recursively_with_mirrored_overlays(
    model, tmp_path, capsys, monkeypatch
):
    rng = np.random.default_rng(3)
    for sub, name in [("good", "000.png"), ("bad/scratch", "000.png"), ("bad/spot", "000.png")]:
        save(tmp_path / "test" / sub / name, normal_image(rng))
    (tmp_path / "test" / "bad" / "loop").symlink_to(tmp_path / "test", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["score", model, "test", "--out", "s.csv", "--maps", "ov"], capsys)
    assert code == 0, err  # was "the folder holds no images"
    assert "not entered twice" in err and "loop" in err  # the cycle, named, not followed
    rows = read_csv("s.csv")
    assert [r["path"] for r in rows] == ["test/bad/scratch/000.png", "test/bad/spot/000.png",
                                         "test/good/000.png"]
    assert [r["map"] for r in rows] == [f"ov/{r['path']}" for r in rows]
    assert sorted(p.as_posix() for p in Path("ov").rglob("*.png")) == [r["map"] for r in rows]


def test_inputs_every_unreadable_file_is_listed_in_one_error(model, tmp_path, capsys):
    d = tmp_path / "d"
    for i in range(2):
        save(d / f"ok{i}.png", normal_image(np.random.default_rng(i)))
    (d / "empty.png").write_bytes(b"")
    (d / "junk.png").write_bytes(b"not a png" * 9)
    (d / "gone.png").symlink_to(tmp_path / "nowhere.png")
    code, _, err = run(["score", model, d, "--out", tmp_path / "s.csv", "--maps",
                        tmp_path / "ov"], capsys)
    assert code == 2 and "3 of 5 images cannot be used" in err
    assert all(name in err for name in ("empty.png", "junk.png", "gone.png"))
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "ov").exists()


# --------------------------------------------------------------------------- numbers


def test_numbers_divergent_training_stops_with_an_error_and_writes_nothing(tmp_path, capsys):
    d = make_folders(tmp_path / "data", n_normal=24, n_anomaly=8, n_test=0)
    code, _, err = run(["train", "--normal", d["train/good"], "--anomaly", d["train/defect"],
                        "--out", tmp_path / "m", *QUICK, "--epochs", "2", "--lr", "1e30"],
                       capsys)
    assert code == 2
    assert "training diverged" in err and "epoch 1/2" in err and "--lr" in err
    assert not (tmp_path / "m").exists()


def test_numbers_json_outputs_are_strict_with_an_infinite_threshold(model, tiny_model, tmp_path,
                                                                    capsys):
    det = SPADE.load(model)
    det.threshold_ = float("inf")  # "never flag": it used to be written as a bare Infinity
    det.save(model, extra={"overlay_scale": 1.0})
    assert strict_json((model / "config.json").read_text())["threshold_"] == "Infinity"
    folders = tiny_model[1]
    args = ["evaluate", model, "--normal", folders["test/good"], "--anomaly",
            folders["test/defect"], "--no-progress"]
    code, out, err = run([*args, "--out", tmp_path / "m.json"], capsys)
    assert code == 0, err
    metrics = strict_json((tmp_path / "m.json").read_text())
    assert metrics["at_threshold"]["threshold"] == "Infinity"
    assert metrics["at_threshold"]["n_flagged"] == 0
    code, out, err = run(args, capsys)  # printed JSON too
    assert code == 0 and strict_json(out)["at_threshold"]["threshold"] == "Infinity"


# --------------------------------------------------------------------------- side effects


def test_side_effects_the_callers_rng_is_untouched_by_train_score_evaluate(model, tiny_model,
                                                                          tmp_path):
    folders = tiny_model[1]
    torch.manual_seed(42)
    np.random.seed(42)
    before = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    workflow.train(folders["train/good"], folders["train/defect"], tmp_path / "again",
                   image_size=16, latent_dim=4, batch_size=8, epochs=1, progress=False, recipe="spadecam")
    workflow.score(model, [folders["test/good"]], progress=False)
    workflow.evaluate(model, folders["test/good"], folders["test/defect"], progress=False)
    assert torch.equal(torch.random.get_rng_state(), before[0])
    np.testing.assert_array_equal(np.random.get_state()[1], before[1])


# --------------------------------------------------------------------------- one rule


def test_rule_a_score_equal_to_the_threshold_is_normal_in_the_csv_and_evaluate(
    model, tiny_model, tmp_path, capsys
):
    folders = tiny_model[1]
    one = folders["test/defect"] / "ta000.png"
    s = workflow.score(model, [one], progress=False)[0]["score"]
    config = json.loads((model / "config.json").read_text())
    config["threshold_"] = s  # exactly this image's score (JSON floats round-trip)
    (model / "config.json").write_text(json.dumps(config))
    rows = workflow.score(model, [one], tmp_path / "s.csv", progress=False)
    assert rows[0]["score"] == s and rows[0]["label"] == 0
    assert read_csv(tmp_path / "s.csv")[0]["label"] == "0"
    m = workflow.evaluate(model, folders["test/good"], folders["test/defect"], progress=False)
    scores = [r["score"] for r in workflow.score(
        model, [folders["test/good"], folders["test/defect"]], progress=False)]
    assert m["at_threshold"]["n_flagged"] == sum(x > s for x in scores)


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_files_get_the_mode_a_plain_open_gives(model, tiny_model, tmp_path, umask, mask):
    folders = tiny_model[1]
    umask(mask)
    want = 0o666 & ~mask  # 0644 with umask 022; every file used to be 0600
    det = SPADE.load(model)
    saved = det.save(tmp_path / "shared_model")
    workflow.score(model, [folders["test/good"]], tmp_path / "s.csv", tmp_path / "ov",
                   progress=False)
    workflow.evaluate(model, folders["test/good"], folders["test/defect"],
                      out=tmp_path / "m.json", progress=False)
    files = [*saved.iterdir(), tmp_path / "s.csv", tmp_path / "m.json",
             *(tmp_path / "ov").rglob("*.png")]
    assert len(files) == 9  # vae, cnn, knn (the feature bank), config, csv, json, 3 overlays
    assert {p.name: mode(p) for p in files} == {p.name: want for p in files}


def test_outputs_overlay_names_never_collide_and_replacing_one_is_said(model, tmp_path, capsys,
                                                                       monkeypatch):
    rng = np.random.default_rng(4)
    save(tmp_path / "a" / "000.png", normal_image(rng))
    save(tmp_path / "b" / "000.png", normal_image(rng))
    monkeypatch.chdir(tmp_path)
    for folder in ("a", "b"):
        code, _, err = run(["score", model, f"{folder}/000.png", "--out", f"{folder}.csv",
                            "--maps", "ov"], capsys)
        assert code == 0 and "warning" not in err
        assert read_csv(f"{folder}.csv")[0]["map"] == f"ov/{folder}/000.png"
    assert sorted(p.as_posix() for p in Path("ov").rglob("*.png")) == ["ov/a/000.png",
                                                                         "ov/b/000.png"]
    code, _, err = run(["score", model, "a/000.png", "--out", "a.csv", "--maps", "ov"], capsys)
    assert code == 0
    assert "spadecam: warning: --maps ov: replacing 1 existing overlay(s)" in err
    assert "spadecam: warning: --out a.csv: replacing the existing file" in err


def test_outputs_train_says_what_it_read_and_warns_on_a_threshold_from_few_normals(
    tmp_path, capsys
):
    # 24 normals, one known anomaly (none can be held out): --threshold-holdout 0.1 holds out
    # 2 normals, whose "99th percentile" then flagged 11 of 34 normals without a word
    d = make_folders(tmp_path / "data", n_normal=24, n_anomaly=1, n_test=0)
    code, out, err = run(["train", "--normal", d["train/good"], "--anomaly", d["train/defect"],
                          "--out", tmp_path / "m", *QUICK, "--epochs", "1"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("read 24 normal and 1 known-anomaly images; sizes 32x32 (all); "
                               "1 channel(s) (grey); model input 16x16 (letterbox)")
    assert "held out 2 normal and 0 known-anomaly images for the threshold" in lines[1]
    assert "(anomalous when score > threshold): the 0.99 quantile of 2 held-out normal" in lines[2]
    assert lines[-1] == f"model written to {tmp_path / 'm'}"
    assert "spadecam: warning: threshold_ is the 0.99 quantile of only 2 held-out normal" in err


def test_outputs_progress_is_one_line_per_epoch_without_a_terminal(tmp_path, capsys):
    d = make_folders(tmp_path / "data", n_normal=12, n_anomaly=4, n_test=0)
    quick = [a for a in QUICK if a != "--no-progress"]
    code, _, err = run(["train", "--normal", d["train/good"], "--anomaly", d["train/defect"],
                        "--out", tmp_path / "m", *quick, "--epochs", "2"], capsys)
    assert code == 0
    assert "\r" not in err  # tqdm redraws used to fill logs under nohup / CI
    epochs = [ln for ln in err.splitlines() if " epoch " in ln]
    assert [ln.split(":")[0] for ln in epochs] == ["VAE epoch 1/2", "VAE epoch 2/2",
                                                   "classifier epoch 1/2", "classifier epoch 2/2"]
