"""Inputs are never read as something else, silently: one image given as an array is one
image (torch detectors and the ONNX runner alike), a file of several pages is refused by
name rather than scored from its first page, and Pillow's decompression-bomb warning names
the file."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _own_images import anomalous_image, normal_image
from spadecam import SPADE
from spadecam.cli import main
from spadecam.data.images import ImageError, image_hw, read_image
from spadecam.detectors import load_detector
from spadecam.models import CNNConfig, VAEConfig
from spadecam.preprocess import batch_layout, check_images
from spadecam.training import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")

TRAIN = TrainConfig(epochs=1, batch_size=8, progress=False, seed=0)


def _rgb_pil_array(rng: np.random.Generator, h: int = 48, w: int = 64) -> np.ndarray:
    """What ``np.asarray(PIL.Image.open(p))`` gives for an RGB file: (H, W, 3) uint8."""
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(a, "RGB"))


def test_batch_layout_reads_a_single_channels_last_image_as_one_image():
    assert batch_layout((48, 64, 3)) == "HWC" and batch_layout((48, 64, 1)) == "HWC"
    assert batch_layout((48, 64, 4)) == "HWC"
    assert batch_layout((48, 64)) == "HW"
    assert batch_layout((48, 64, 64)) == "NHW"  # a batch of grey images
    assert batch_layout((3, 64, 64)) == "NHW"  # three grey images (documented)
    assert batch_layout((2, 3, 8, 3)) == "NCHW" and batch_layout((2, 8, 8, 3)) == "NHWC"
    with pytest.raises(ValueError, match=r"X has shape \(5,\); accepted: .*\(H, W, C\)"):
        batch_layout((5,))
    got = check_images(np.zeros((48, 64, 3), np.uint8))
    assert len(got) == 1 and got[0].shape == (3, 48, 64)
    got = check_images(np.zeros((48, 64), np.uint8))
    assert len(got) == 1 and got[0].shape == (1, 48, 64)


def test_one_pil_image_is_one_image_for_grey_and_rgb_models_torch_and_onnx(tiny_model, tmp_path):
    """(48, 64, 3) from PIL was read as 48 grey images of 64 x 3 pixels by a grey model (48
    scores, all flagged), and as '1 channel(s)' by an RGB model."""
    pytest.importorskip("onnxruntime")
    from spadecam.deploy import OnnxSPADE, export_onnx

    rng = np.random.default_rng(0)
    rgb = _rgb_pil_array(rng)
    grey = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))  # (48, 64)
    det = load_detector(tiny_model[0])  # a grey model
    onnx = OnnxSPADE(export_onnx(det, tmp_path / "grey.onnx"))
    for scorer in (det, onnx):
        for call in (scorer.decision_function, scorer.predict, scorer.anomaly_map):
            with pytest.raises(ValueError, match=r"3 channel\(s\) but the model was fitted on 1"):
                call(rgb)
        one = scorer.decision_function(grey)
        assert one.shape == (1,)
        np.testing.assert_allclose(one, scorer.decision_function([grey]), rtol=1e-6)
        assert scorer.anomaly_map(grey).shape == (1, 48, 64)
        assert scorer.predict(grey).shape == (1,)

    # an RGB model takes the same array as one RGB image
    x = np.stack([_rgb_pil_array(rng, 24, 24) for _ in range(12)])
    y = np.r_[np.zeros(9), np.ones(3)]
    det3 = SPADE(image_size=16, vae_config=VAEConfig(latent_dim=4, channels=(4, 8)),
                 cnn_config=CNNConfig(channels=(4, 8), kernel_sizes=(3, 3), strides=(2, 2)),
                 vae_train=TRAIN, cnn_train=TRAIN, precision="32", threshold_holdout=0.0,
                 batch_size=8, recipe="spadecam").fit(x, y)
    onnx3 = OnnxSPADE(export_onnx(det3, tmp_path / "rgb.onnx"))
    for scorer in (det3, onnx3):
        s = scorer.decision_function(rgb)
        assert s.shape == (1,)
        np.testing.assert_allclose(s, scorer.decision_function([rgb]), rtol=1e-5)
        assert scorer.anomaly_map(rgb).shape == (1, 48, 64)


def _pages(path: Path, pages: list[np.ndarray], **kwargs) -> Path:
    ims = [Image.fromarray(p) for p in pages]
    ims[0].save(path, save_all=True, append_images=ims[1:], **kwargs)
    return path


def test_a_multi_page_tiff_or_animated_gif_is_refused_by_name_not_read_from_page_one(
        tiny_model, tmp_path, capsys):
    """A 3-page TIFF with a defect on page 3 was scored from page 1 alone (normal)."""
    rng = np.random.default_rng(1)
    pages = [normal_image(rng), normal_image(rng), anomalous_image(rng)[0]]
    (tmp_path / "in").mkdir()
    tif = _pages(tmp_path / "in" / "stack.tif", pages)
    gif = _pages(tmp_path / "anim.gif", pages)
    for path in (tif, gif):
        with pytest.raises(ImageError, match=r"holds 3 pages or frames"):
            read_image(path)
        with pytest.raises(ImageError, match=r"holds 3 pages or frames"):
            image_hw(path)
    # through the CLI: in a folder, and named explicitly; exit 2, the file named, no CSV
    for given in (tmp_path / "in", gif):
        out = tmp_path / f"{given.name}.csv"
        code = main(["score", str(tiny_model[0]), str(given), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and str(tif if given.is_dir() else gif) in err and "pages" in err
        assert not out.exists()
    # a single-page file of either kind is read as before
    one = _pages(tmp_path / "one.gif", pages[:1])
    assert read_image(one).shape == (1, 32, 32)
    out = tmp_path / "one.csv"
    assert main(["score", str(tiny_model[0]), str(one), "--out", str(out)]) == 0
    with open(out, newline="") as f:
        assert len(list(csv.DictReader(f))) == 1


def test_a_decompression_bomb_warning_names_the_file_and_the_memory(tmp_path, monkeypatch):
    """Pillow's DecompressionBombWarning reached the user raw (no file, no size)."""
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # 2,000 pixels: above, below 2x
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_image(path).shape == (1, 40, 50)
    kinds = [w.category.__name__ for w in caught]
    assert "DecompressionBombWarning" not in kinds
    ours = [str(w.message) for w in caught if w.category.__name__ == "SpadecamWarning"]
    assert len(ours) == 1 and str(path) in ours[0] and "50x40 pixels" in ours[0]
    assert "GB of memory" in ours[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 900)  # above twice the limit: refused
    with pytest.raises(ImageError, match="decompression bomb"):
        read_image(path)


def test_a_tiff_with_a_thumbnail_page_is_read_as_its_one_image(tmp_path):
    """Reduced-resolution pages (NewSubfileType bit 0: thumbnails, pyramid levels) are not
    pages of their own: such a TIFF is one image, while two full pages are refused."""
    from PIL import TiffImagePlugin

    full = Image.fromarray(np.full((16, 16), 100, np.uint8))
    small = Image.fromarray(np.full((4, 4), 7, np.uint8))
    for name, info in (("thumb.tif", {254: 1}), ("two.tif", {})):
        with TiffImagePlugin.AppendingTiffWriter(tmp_path / name, True) as tf:
            full.save(tf, format="TIFF")
            tf.newFrame()
            small.save(tf, format="TIFF", tiffinfo=info)
            tf.newFrame()
    x = read_image(tmp_path / "thumb.tif")
    assert x.shape == (1, 16, 16) and np.allclose(x, 100 / 255)
    with pytest.raises(ImageError, match="holds 2 pages"):
        read_image(tmp_path / "two.tif")


def test_a_list_image_whose_channel_axis_is_ambiguous_is_refused_for_torch_and_onnx():
    """In a list, (3, 64, 3) could be channels-first or channels-last: an error naming the
    item, by both readers, instead of a silent guess."""
    from spadecam.inputs import image_list

    ok = [np.zeros((48, 64, 3), np.uint8), np.zeros((3, 48, 64), np.uint8)]
    assert tuple(image_list(ok).shape) == (2, 3, 48, 64)
    assert [a.shape for a in check_images(ok)] == [(3, 48, 64)] * 2
    bad = ok + [np.zeros((3, 64, 3), np.uint8)]
    for read in (image_list, check_images):
        with pytest.raises(ValueError, match=r"X\[2\] has shape \(3, 64, 3\): both"):
            read(bad)


def test_batches_of_one_of_any_size_need_no_layout_guess():
    """A list of (1, C, H, W) batches (what the CLI passes the detectors) is read as it is,
    however small: a 1x1 grey image or a 3-pixel-wide one, which as a (C, H, W) array would be
    ambiguous (its first and last axes could both be the channels)."""
    from spadecam.inputs import image_list

    imgs = [np.zeros((1, 1, 1, 1), np.uint8), np.full((1, 1, 5, 3), 7, np.uint8),
            np.zeros((1, 1, 4, 9), np.uint8)]
    with pytest.raises(ValueError, match="both its first and its last axis"):
        check_images([imgs[0][0]])
    numpy = check_images(imgs)
    torch_ = image_list(imgs)
    assert [a.shape for a in numpy] == [(1, 1, 1), (1, 5, 3), (1, 4, 9)]
    assert [tuple(t.shape) for t in torch_] == [(1, 1, 1, 1), (1, 1, 5, 3), (1, 1, 4, 9)]
    assert int(numpy[1].max()) == int(torch_[1].max()) == 7
