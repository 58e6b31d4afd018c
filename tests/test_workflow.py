"""The own-image CLI end to end: spadecam train / score / evaluate on generated folders of
tiny PNGs (8-bit, 16-bit, colour of odd sizes), and every bad input it must refuse with a
clear message, exit code 2 and no file written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _own_images import make_folders, normal_image, save
from spadecam import SPADE
from spadecam.cli import main
from spadecam.models.resnet import ResNetClassifier

QUICK = ["--recipe", "spadecam",
         "--image-size", "32", "--latent-dim", "16", "--batch-size", "8", "--no-progress"]


pytestmark = pytest.mark.usefixtures("single_thread")


def train_args(d: dict, out, *extra: str) -> list[str]:
    return ["train", "--normal", str(d["train/good"]), "--anomaly", str(d["train/defect"]),
            "--out", str(out), *QUICK, *extra]


@pytest.fixture(scope="module")
def folders8(tmp_path_factory):
    return make_folders(tmp_path_factory.mktemp("png8"))


@pytest.fixture(scope="module")
def model8(folders8, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "model8"
    assert main(train_args(folders8, out, "--epochs", "12")) == 0
    return out


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- happy paths


def test_train_writes_a_loadable_model_directory(model8):
    assert sorted(p.name for p in model8.iterdir()) == [
        "cnn.safetensors", "config.json", "knn.safetensors", "vae.safetensors"
    ]
    config = json.loads((model8 / "config.json").read_text())
    # the input side and policy are recorded once, in "input"; preprocessing_
    # shows them with the rest, as before
    assert config["preprocessing"] == {"channels": 1, "normalisation": "dtype_max",
                                       "min_input_size": 16}
    assert config["input"] == {"image_size": 32, "channels": 1, "resize": "letterbox"}
    assert "resize" not in config["detector"]["params"]
    assert SPADE.load(model8).preprocessing_ == {
        "image_size": 32, "channels": 1, "resize": "letterbox", "normalisation": "dtype_max",
        "min_input_size": 16,
    }
    assert config["threshold_source"] == "f1_max_held_out"
    assert config["training"]["n_normal"] == 30 and config["training"]["n_anomaly"] == 12
    det = SPADE.load(model8)
    assert det.threshold_ == config["threshold_"] and det.preprocessing_["channels"] == 1


def test_score_writes_csv_with_decisions_and_overlays(model8, folders8, tmp_path):
    out, maps = tmp_path / "scores.csv", tmp_path / "maps"
    inputs = [str(folders8["test/good"]), str(folders8["test/defect"])]
    assert main(["score", str(model8), *inputs, "--out", str(out), "--maps", str(maps),
                 "--no-progress"]) == 0
    rows = read_csv(out)
    assert list(rows[0]) == ["path", "score", "label", "map"] and len(rows) == 16
    threshold = SPADE.load(model8).threshold_
    for r in rows:
        assert int(r["label"]) == int(float(r["score"]) > threshold)
    defect = np.array(["defect" in r["path"] for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    assert labels[defect].mean() >= 0.75 and labels[~defect].mean() <= 0.25
    pngs = sorted(p for p in maps.rglob("*.png"))
    assert sorted(Path(r["map"]) for r in rows) == pngs  # one overlay per row, named in it
    assert [p.stem for p in pngs] == sorted(f"{'tn' if i < 8 else 'ta'}{i % 8:03d}"
                                            for i in range(16))
    im = Image.open(pngs[0])
    assert im.mode == "RGB" and im.size == (32, 32)


def test_score_prints_csv_without_out(model8, folders8, capsys):
    one = folders8["test/defect"] / "ta000.png"
    assert main(["score", str(model8), str(one), "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "path,score,label,map" and lines[1].startswith(str(one))
    assert lines[1].endswith(",")  # no overlay written: an empty map


def test_evaluate_writes_image_and_pixel_metrics(model8, folders8, tmp_path):
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(model8), "--normal", str(folders8["test/good"]),
                 "--anomaly", str(folders8["test/defect"]), "--masks",
                 str(folders8["test/masks"]), "--out", str(out), "--no-progress"]) == 0
    m = json.loads(out.read_text())
    assert m["n_normal"] == 8 and m["n_anomalous"] == 8 and m["n_pixel_images"] == 16
    assert m["image_auroc"] >= 0.9 and m["image_average_precision"] >= 0.9 and m["image_f1_max"] >= 0.8
    assert m["pixel_auroc"] >= 0.8
    assert set(m["at_threshold"]) >= {"precision", "recall", "f1", "false_positive_rate"}


def test_16bit_depth_frames_are_learned_at_full_precision(tmp_path):
    # values around 20000 and 50000 of 65535: an 8-bit conversion would clip both to 255
    d = make_folders(tmp_path / "png16", n_normal=24, n_anomaly=10, bits=16, seed=1)
    assert Image.open(d["train/good"] / "n000.png").mode == "I;16"
    out, metrics = tmp_path / "model16", tmp_path / "m.json"
    assert main(train_args(d, out, "--epochs", "10", "--channels", "1")) == 0
    assert main(["evaluate", str(out), "--normal", str(d["test/good"]), "--anomaly",
                 str(d["test/defect"]), "--out", str(metrics), "--no-progress"]) == 0
    m = json.loads(metrics.read_text())
    assert m["image_auroc"] >= 0.9 and m["pixel_auroc"] is None


def test_colour_and_grey_images_of_odd_sizes_with_letterbox(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(6):
        save(tmp_path / "good" / f"c{i}.png", rng.integers(0, 60, (20 + i, 41, 3), np.uint8))
        save(tmp_path / "good" / f"g{i}.jpg", normal_image(rng, 37))
        x = rng.integers(0, 60, (50, 30, 4), np.uint8)
        x[10:20, 10:20] = 255
        save(tmp_path / "bad" / f"b{i}.png", x)  # RGBA
    out, maps = tmp_path / "model", tmp_path / "maps"
    args = ["train", "--normal", str(tmp_path / "good"), "--anomaly", str(tmp_path / "bad"),
            "--out", str(out), *QUICK, "--epochs", "1", "--channels", "3",
            "--resize", "letterbox"]
    assert main(args) == 0
    assert SPADE.load(out).preprocessing_["resize"] == "letterbox"
    assert main(["score", str(out), str(tmp_path / "bad"), "--maps", str(maps),
                 "--no-progress"]) == 0
    assert len(list(maps.rglob("*.png"))) == 6


def test_resnet18_backbone(folders8, tmp_path):
    out = tmp_path / "resnet"
    assert main(train_args(folders8, out, "--epochs", "1", "--backbone", "resnet18")) == 0
    det = SPADE.load(out)
    assert isinstance(det.cnn_, ResNetClassifier)
    # one backbone vocabulary: the CLI's name is the one stored (0.1 wrote "resnet")
    assert json.loads((out / "config.json").read_text())["cnn_backbone"] == "resnet18"
    assert main(["score", str(out), str(folders8["test/defect"]), "--no-progress"]) == 0


def test_error_options_reach_the_saved_model(folders8, tmp_path):
    out = tmp_path / "l2"
    assert main(train_args(folders8, out, "--epochs", "1", "--error-smoothing", "2",
                           "--error-norm", "l2")) == 0
    det = SPADE.load(out)
    assert (det.error_smoothing, det.error_norm) == (2.0, "l2")


def test_retraining_into_the_same_model_directory(model8, folders8, tmp_path):
    out = tmp_path / "again"
    assert main(train_args(folders8, out, "--epochs", "1")) == 0
    assert main(train_args(folders8, out, "--epochs", "1", "--seed", "1")) == 0
    assert SPADE.load(out).threshold_ is not None


@pytest.mark.parametrize("command", ["train", "score", "evaluate"])
def test_help_explains_each_command(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "example (three folders of PNGs)" in text and "16-bit" in text


# --------------------------------------------------------------------------- bad input


@pytest.fixture()
def small(tmp_path):
    """Four normal and two anomalous 32x32 PNGs; tests add one bad file."""
    rng = np.random.default_rng(5)
    d = {"train/good": tmp_path / "good", "train/defect": tmp_path / "defect"}
    for i in range(4):
        save(d["train/good"] / f"n{i}.png", normal_image(rng))
    for i in range(2):
        save(d["train/defect"] / f"a{i}.png", normal_image(rng))
    return d


def fails(argv, capsys, *patterns: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "spadecam: error:" in err, err
    for p in patterns:
        assert p in err, (p, err)
    return err


def write_bad(folder, kind: str):
    noise = np.random.default_rng(0).integers(0, 256, (32, 32), np.uint8)
    good = save(folder / "ok_copy.png", noise).read_bytes()
    (folder / "ok_copy.png").unlink()
    if kind == "corrupt":
        (folder / "bad.png").write_bytes(b"\x89PNG not really" * 10)
    elif kind == "zero-byte":
        (folder / "bad.png").write_bytes(b"")
    elif kind == "truncated":
        (folder / "bad.png").write_bytes(good[: len(good) // 2])  # cut inside the pixels
    elif kind == "unsupported mode":
        Image.fromarray(np.zeros((32, 32), np.float32)).save(folder / "bad.tif")
    elif kind == "colour among grey":
        save(folder / "bad.png", np.zeros((32, 32, 3), np.uint8))


@pytest.mark.parametrize(
    "kind, message",
    [("corrupt", "cannot read"), ("zero-byte", "empty (0 bytes)"),
     ("truncated", "runcated"), ("unsupported mode", "unsupported image mode 'F'"),
     ("colour among grey", "mixed channel counts")],
)
def test_train_refuses_bad_images_and_writes_nothing(small, tmp_path, capsys, kind, message):
    write_bad(small["train/defect"], kind)
    out = tmp_path / "model"
    fails(train_args(small, out, "--epochs", "1"), capsys, "bad.", message)
    assert not out.exists()


def test_train_refuses_empty_folder_and_bad_options(small, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "model"
    base = ["train", "--recipe", "spadecam", "--normal", str(small["train/good"]), "--out",
            str(out), "--no-progress"]
    fails([*base, "--anomaly", str(tmp_path / "empty")], capsys, "--anomaly", "empty",
          "holds no images")
    anomaly = ["--anomaly", str(small["train/defect"])]
    fails([*base, *anomaly, "--image-size", "8"], capsys, "--image-size 8", "minimum of 16")
    # the minimum of the networks the detector trains: the CNN-based baseline has no VAE
    from spadecam import CNNDetector
    from spadecam.workflow import build_detector

    assert build_detector(10, detector="cnn", recipe="spadecam", progress=False).image_size == 10
    assert CNNDetector(recipe="spadecam").min_input_side() == 8
    fails([*base, *anomaly, "--image-size", "16", "--backbone", "resnet18"], capsys,
          "--image-size 16", "minimum of 32")
    fails([*base, *anomaly, "--epochs", "0"], capsys, "--epochs")
    fails([*base, *anomaly, "--error-smoothing", "-1"], capsys, "--error-smoothing", ">= 0")
    fails([*base, *anomaly, "--cam-layer", "3"], capsys, "--cam-layer", "-3 to 2", "got 3")
    fails([*base, *anomaly, "--roi-power", "0"], capsys,
          "--roi-power must be a finite number > 0, got 0.0")
    fails([*base, *anomaly, "--classifier-weight", "-1"], capsys, "--classifier-weight")
    assert not out.exists()
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "keep.txt").write_text("mine")
    fails(["train", "--recipe", "spadecam", "--normal", str(small["train/good"]), *anomaly, "--out",
           str(tmp_path / "stuff")], capsys, "not a spadecam model directory")
    assert [p.name for p in (tmp_path / "stuff").iterdir()] == ["keep.txt"]


def test_train_reaches_every_spade_scoring_option(small, tmp_path, capsys):
    # --classifier-weight, --roi-power and --cam-layer were API-only
    out = tmp_path / "model"
    assert main(["train", "--recipe", "spadecam", "--normal", str(small["train/good"]), "--anomaly",
                 str(small["train/defect"]), "--out", str(out), "--image-size", "16",
                 "--latent-dim", "4", "--epochs", "1", "--no-progress",
                 "--classifier-weight", "10", "--roi-power", "2", "--cam-layer", "-2"]) == 0
    det = SPADE.load(out)
    assert (det.classifier_weight, det.roi_power, det.cam_layer) == (10.0, 2.0, -2)
    capsys.readouterr()


def test_score_refuses_bad_inputs_and_writes_nothing(model8, small, tmp_path, capsys):
    out, maps = tmp_path / "s.csv", tmp_path / "maps"
    write_bad(small["train/good"], "truncated")
    fails(["score", str(model8), str(small["train/good"]), "--out", str(out), "--maps",
           str(maps)], capsys, "bad.png")
    fails(["score", str(model8), str(tmp_path / "missing.png"), "--out", str(out)], capsys,
          "missing.png", "no such file")
    (tmp_path / "empty").mkdir()
    fails(["score", str(model8), str(tmp_path / "empty"), "--out", str(out)], capsys,
          "empty", "holds no images")
    assert not out.exists() and not maps.exists()


def test_score_refuses_pickle_and_non_model_directories(model8, folders8, tmp_path, capsys):
    fake = tmp_path / "fake"
    fake.mkdir()
    torch.save({"weights": 1}, fake / "model.pt")
    img = str(folders8["test/good"] / "tn000.png")
    fails(["score", str(fake), img], capsys, "pickle", "model.pt")
    fails(["score", str(tmp_path), img], capsys, "config.json is missing")


def test_evaluate_refuses_unmatched_masks_single_class_and_bad_masks(
    model8, folders8, tmp_path, capsys
):
    out = tmp_path / "m.json"
    base = ["evaluate", str(model8), "--normal", str(folders8["test/good"]), "--out", str(out)]
    anomaly = ["--anomaly", str(folders8["test/defect"])]
    masks = tmp_path / "masks"
    save(masks / "ta000_mask.png", np.zeros((32, 32), np.uint8))
    save(masks / "orphan_mask.png", np.zeros((32, 32), np.uint8))
    fails([*base, *anomaly, "--masks", str(masks)], capsys, "orphan_mask.png", "has no image")
    fails(base, capsys, "--anomaly", "single class")
    (masks / "orphan_mask.png").unlink()
    save(masks / "ta000_mask.png", np.zeros((16, 16), np.uint8))
    fails([*base, *anomaly, "--masks", str(masks)], capsys, "ta000_mask.png", "16x16",
          "32x32")
    assert not out.exists()


def test_evaluate_on_an_mvtec_category(model8, folders8, tmp_path, capsys):
    import shutil

    root = tmp_path / "mvtec" / "widget"
    shutil.copytree(folders8["train/good"], root / "train" / "good")
    shutil.copytree(folders8["test/good"], root / "test" / "good")
    shutil.copytree(folders8["test/defect"], root / "test" / "square")
    shutil.copytree(folders8["test/masks"], root / "ground_truth" / "square")
    out = tmp_path / "m.json"
    assert main(["evaluate", str(model8), "--mvtec", str(root), "--out", str(out),
                 "--no-progress"]) == 0
    m = json.loads(out.read_text())
    assert m["n_anomalous"] == 8 and m["n_pixel_images"] == 16 and m["pixel_auroc"] >= 0.8
    fails(["evaluate", str(model8), "--mvtec", str(root), "--normal", str(root)], capsys,
          "either --mvtec")
    shutil.rmtree(root / "test" / "square")
    shutil.rmtree(root / "ground_truth")
    fails(["evaluate", str(model8), "--mvtec", str(root), "--out", str(tmp_path / "x.json")],
          capsys, "single class")
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("value", [0, -1])
def test_latent_dim_zero_is_refused_not_read_as_the_recipes(value):
    # `latent_dim or defaults[...]` trained with the recipe's 8 when given 0
    from spadecam.workflow import build_detector

    with pytest.raises(ValueError, match="--latent-dim must be >= 1"):
        build_detector(32, 1, latent_dim=value, recipe="spadecam")
    with pytest.raises(ValueError, match="--channels must be 1 or 3"):
        build_detector(32, 0, recipe="spadecam")
    assert build_detector(32, 1, latent_dim=3, recipe="spadecam").vae_config.latent_dim == 3
    # unset: the recipe's VAE, built by fit as SPADE() builds it
    assert build_detector(32, 1, recipe="spadecam").vae_config is None
    assert SPADE(recipe="spadecam")._fit_configs()[0].latent_dim == 8
