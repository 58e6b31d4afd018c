"""Any image size through the API: non-square, mixed sizes, maps at each image's
own size, letterbox padding that never counts, the minimum size and sizing from the data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from spadecam import SPADE, VAEDetector
from spadecam.cli import main
from spadecam.detectors import spade_error_map
from spadecam.inputs import image_list, maps_to_images, to_model_batch
from spadecam.models import CNNConfig, VAEConfig
from spadecam.models.cnn import ConvClassifier
from spadecam.training import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")

TRAIN = TrainConfig(epochs=1, batch_size=8, progress=False, seed=0)
TINY_VAE = VAEConfig(latent_dim=4, channels=(4, 8))
TINY_CNN = CNNConfig(channels=(4, 8), kernel_sizes=(3, 3), strides=(2, 2))


def tiny(**kw) -> SPADE:
    return SPADE(vae_config=kw.pop("vae_config", TINY_VAE), cnn_config=TINY_CNN,
                 vae_train=TRAIN, cnn_train=TRAIN, **kw, recipe="spadecam")


def images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8)


LABELS = np.r_[np.zeros(16), np.ones(8)].astype(np.int64)


@pytest.fixture(scope="module")
def fitted_non_square():
    return tiny().fit(images(24, 40, 100), LABELS)


def test_non_square_uint8_batch_gives_maps_at_its_own_size(fitted_non_square):
    det = fitted_non_square
    assert det.image_size_ == 100 and det.vae_.config.image_size == 100  # longest side
    x = images(5, 40, 100, seed=1)
    maps = det.anomaly_map(x)
    assert maps.shape == (5, 40, 100) and maps.dtype == np.float32 and (maps >= 0).all()
    scores, maps2 = det.decision_function_and_map(x)
    assert scores.shape == (5,) and np.array_equal(maps, maps2)
    assert np.allclose(det.decision_function(x), scores)


def test_a_model_fitted_on_32_scores_other_and_mixed_sizes():
    det = tiny().fit(images(24, 32, 32), LABELS)
    assert det.image_size_ == 32
    assert det.anomaly_map(images(1, 40, 100)).shape == (1, 40, 100)
    assert det.anomaly_map(images(2, 64, 64)).shape == (2, 64, 64)
    mixed = [images(1, 40, 100)[0], images(1, 64, 64)[0], images(1, 32, 32)[0]]
    maps = det.anomaly_map(mixed)
    assert [m.shape for m in maps] == [(40, 100), (64, 64), (32, 32)]
    # the image already at the model size is scored exactly as in a batch of its own
    scores, _ = det.decision_function_and_map(mixed)
    assert scores[2] == pytest.approx(det.decision_function(mixed[2][None])[0], rel=1e-6)
    assert maps[2].sum() == pytest.approx(scores[2], rel=1e-5)
    # a DataLoader-like iterable of batches of different sizes
    batches = [torch.as_tensor(images(2, 40, 100)), torch.as_tensor(images(3, 20, 20))]
    assert det.decision_function(iter(batches)).shape == (5,)


def test_letterbox_box_and_valid_mask_by_hand():
    # 40 x 100 into 50: scale 0.5 -> 20 x 50, centred: top (50 - 20) // 2 = 15, left 0
    mb = to_model_batch(torch.zeros(1, 1, 40, 100, dtype=torch.uint8), 50, "letterbox")
    assert mb.boxes == [(15, 0, 20, 50)]
    assert mb.valid[0, 0].sum() == 20 * 50 and mb.valid[0, 0, 15:35].all()
    assert mb.valid[0, 0, :15].sum() == 0 and mb.valid[0, 0, 35:].sum() == 0
    stretched = to_model_batch(torch.zeros(1, 1, 40, 100, dtype=torch.uint8), 50, "resize")
    assert stretched.valid is None and stretched.boxes == [(0, 0, 50, 50)]
    # maps come back from the box at the image's size: a constant map stays constant
    maps = maps_to_images(torch.full((1, 50, 50), 2.0), mb)
    assert maps[0].shape == (40, 100) and np.allclose(maps[0], 2.0)


def test_padding_never_counts_in_the_weighted_error():
    torch.manual_seed(0)
    cnn = ConvClassifier(CNNConfig(in_channels=1, channels=(4,), kernel_sizes=(3,), strides=(2,)))
    u = torch.zeros(1, 1, 8, 8)
    u_hat = torch.full((1, 1, 8, 8), 0.5)
    u_hat[..., 4:] = 1.0  # a large error on the right half, the "padding"
    valid = torch.zeros(1, 1, 8, 8)
    valid[..., :4] = 1.0
    m = spade_error_map(cnn.eval(), u, u_hat, valid=valid)
    # L / |L| sums to 1 over the image pixels, where e = 0.5: the score is exactly 0.5
    assert float(m.sum()) == pytest.approx(0.5, rel=1e-5)
    assert float(m[..., 4:].abs().sum()) == 0.0
    assert float(spade_error_map(cnn.eval(), u, u_hat).sum()) > 0.5  # without the mask


def test_vae_detector_scores_exclude_padding():
    # a 16 x 32 image letterboxed to 32: rows 0-7 and 24-31 are padding
    det = VAEDetector(vae_config=TINY_VAE, vae_train=TRAIN).fit(images(8, 16, 32))
    mb = to_model_batch(torch.as_tensor(images(1, 16, 32))[:, None], 32, "letterbox")
    _, grid = det._scores_and_maps(mb.u, mb.valid, True)
    assert float(grid[0, :8].sum()) == 0.0 and float(grid[0, 24:].sum()) == 0.0


def test_below_the_minimum_size_is_a_clear_error():
    # the default-shaped VAE (4 stride-2 layers, kernel 4) needs 16 px
    with pytest.raises(ValueError, match=r"X \(images up to 8 px.*minimum input side of 16"):
        SPADE(vae_config=VAEConfig(latent_dim=4), cnn_train=TRAIN, vae_train=TRAIN, recipe="spadecam").fit(
            images(24, 8, 8), LABELS)
    with pytest.raises(ValueError, match=r"image_size=12 is below the minimum input side of 16"):
        SPADE(image_size=12, vae_config=VAEConfig(latent_dim=4),
            recipe="spadecam").fit(images(24, 40, 40), LABELS)
    with pytest.raises(ValueError, match=r"image_size=32 differs from vae_config.image_size=28"):
        SPADE(image_size=32, vae_config=VAEConfig(image_size=28),
            recipe="spadecam").fit(images(24, 40, 40), LABELS)


def test_vae_config_without_a_size_is_sized_from_the_data():
    # the README's advice, VAEConfig(latent_dim=8), on 64 x 64 images (used to default to 84)
    det = SPADE(vae_config=VAEConfig(latent_dim=8), cnn_config=TINY_CNN, vae_train=TRAIN,
                cnn_train=TRAIN, recipe="spadecam").fit(images(24, 64, 64), LABELS)
    assert det.vae_.config.image_size == 64 and det.vae_.config.in_channels == 1
    assert det.anomaly_map(images(2, 64, 64)).shape == (2, 64, 64)


def test_channel_mismatches_are_named():
    det = tiny().fit(images(24, 32, 32), LABELS)
    rgb = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"X has 3 channel\(s\) but the model was fitted on 1"):
        det.decision_function(rgb)
    with pytest.raises(ValueError, match=r"vae_config.in_channels=3 but X has 1"):
        tiny(vae_config=VAEConfig(in_channels=3, latent_dim=4, channels=(4, 8))).fit(
            images(24, 32, 32), LABELS)
    with pytest.raises(ValueError, match=r"X\[1\] is float"):
        image_list([np.zeros((8, 8)), np.full((9, 9), 2.0)])


def test_saved_model_keeps_its_input_size_and_policy(fitted_non_square, tmp_path):
    fitted_non_square.save(tmp_path / "m")
    det = SPADE.load(tmp_path / "m")
    assert det.image_size_ == 100 and det.resize == "letterbox"
    x = images(2, 30, 70, seed=3)
    assert np.allclose(det.decision_function(x), fitted_non_square.decision_function(x))
    assert det.anomaly_map(x).shape == (2, 30, 70)


def test_cli_overlays_are_written_at_each_image_size(tmp_path):
    rng = np.random.default_rng(0)
    for kind, n in (("good", 10), ("bad", 6)):
        (tmp_path / kind).mkdir()
        for i in range(n):
            a = rng.integers(0, 40, (24, 48), dtype=np.uint8)
            if kind == "bad":
                a[8:16, 10:20] = 250
            Image.fromarray(a).save(tmp_path / kind / f"{kind}{i}.png")
    (tmp_path / "new").mkdir()
    Image.fromarray(rng.integers(0, 40, (30, 70), dtype=np.uint8)).save(tmp_path / "new/a.png")
    Image.fromarray(rng.integers(0, 40, (64, 40), dtype=np.uint8)).save(tmp_path / "new/b.png")
    model = tmp_path / "model"
    assert main(["train",
        "--recipe", "spadecam", "--normal", str(tmp_path / "good"), "--anomaly", str(tmp_path / "bad"),
                 "--out", str(model), "--image-size", "32", "--epochs", "1",
                 "--no-progress"]) == 0
    assert main(["score", str(model), str(tmp_path / "new"), "--maps", str(tmp_path / "maps"),
                 "--no-progress"]) == 0
    overlays = {p.name: Image.open(p).size for p in (tmp_path / "maps").rglob("*.png")}
    assert overlays == {"a.png": (70, 30), "b.png": (40, 64)}


def test_recipes_set_the_defaults_and_the_paper_is_one_argument_away():
    from spadecam.detectors import default_cnn_config, default_vae_config

    ours = SPADE(recipe="spadecam")
    assert ours._param("error_smoothing") == 2.0 and ours._param("error_norm") == "l2"
    paper = SPADE(recipe="paper")
    assert (paper._param("error_smoothing"), paper._param("error_norm")) == (0.0, "l1")
    assert SPADE(recipe="paper", error_norm="l2")._param("error_norm") == "l2"  # explicit wins
    assert default_vae_config("paper").latent_dim == 128
    assert default_vae_config().latent_dim == 8
    # receptive field 1 + 7 (k - 1) closest to a third of the side, odd k in 3..9
    assert [default_cnn_config(s).kernel_sizes[0] for s in (32, 64, 84, 128, 300)] == [3, 5, 5, 7, 9]
    assert default_cnn_config(84).receptive_field == 29
    assert default_cnn_config(84, "paper").kernel_sizes == (3, 3, 3)
    with pytest.raises(ValueError, match="recipe must be one of"):
        SPADE(recipe="fast")._param("error_norm")


def test_default_classifier_is_sized_from_the_data(tmp_path):
    det = SPADE(vae_config=TINY_VAE, vae_train=TRAIN, cnn_train=TRAIN,
                recipe="spadecam").fit(images(24, 64, 64), LABELS)
    assert det.cnn_.config.kernel_sizes == (5, 5, 5)
    det.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["detector"]["params"]["error_norm"] == "l2"  # resolved values are stored


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("view", ["reversed", "flipped", "rot90"])
def test_numpy_views_with_negative_strides_read_as_their_copy(view):
    # torch refuses negative strides ("At least one stride in the given numpy array is
    # negative"); the same data with .copy() always scored
    x = images(24, 32, 32)
    make = {"reversed": lambda a: a[::-1], "flipped": lambda a: np.flip(a, 2),
            "rot90": lambda a: np.rot90(a, axes=(1, 2))}[view]
    v = make(x)
    assert any(s < 0 for s in v.strides)
    det = tiny(precision="32", threshold_holdout=0.0)
    det.fit(v, LABELS)
    ref = tiny(precision="32", threshold_holdout=0.0).fit(v.copy(), LABELS)
    np.testing.assert_array_equal(det.decision_function(v), ref.decision_function(v.copy()))
    np.testing.assert_array_equal(det.decision_function(list(v)),
                                  ref.decision_function(v.copy()))
    # the labels may be a view too
    tiny(precision="32").fit(v.copy(), LABELS[::-1].copy()[::-1])


def test_channels_last_rgb_is_recognised_and_documented():
    # np.asarray(PIL.Image) gives (H, W, 3): a batch (N, 32, 32, 3) used to train a
    # 32-channel model on 32 x 3 "images"
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    nchw = np.ascontiguousarray(np.moveaxis(nhwc, -1, 1))
    assert image_list(nhwc).shape == (24, 3, 32, 32)
    torch.testing.assert_close(image_list(nhwc), torch.from_numpy(nchw))
    det = tiny(precision="32").fit(nhwc, LABELS)
    assert det.in_channels_ == 3 and det.image_size_ == 32
    maps = det.anomaly_map(nhwc[:2])
    assert maps.shape == (2, 32, 32)
    ref = tiny(precision="32").fit(nchw, LABELS)
    np.testing.assert_array_equal(det.decision_function(nhwc), ref.decision_function(nchw))
    # single images from PIL, (H, W, 3), in a list, even of different sizes
    pil = [np.asarray(Image.fromarray(a)) for a in nhwc[:2]] + [nhwc[2, :20]]
    got = image_list(pil)
    assert [tuple(t.shape) for t in got] == [(1, 3, 32, 32)] * 2 + [(1, 3, 20, 32)]
    # channels-first stays channels-first, also when the last axis happens to be 3 or 1
    assert image_list(np.zeros((2, 3, 8, 3), np.uint8)).shape == (2, 3, 8, 3)
    assert image_list(np.zeros((2, 1, 8, 1), np.uint8)).shape == (2, 1, 8, 1)
    assert image_list(np.zeros((2, 8, 8, 1), np.uint8)).shape == (2, 1, 8, 8)


def test_one_uint8_to_float_conversion_and_its_old_name_warns():
    from spadecam.inputs import to_float_images

    got = to_float_images(torch.tensor([[0, 51, 255]], dtype=torch.uint8))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.2, 1.0]]))  # by hand: v / 255
    half = torch.tensor([0.25, 0.5], dtype=torch.float64)
    assert to_float_images(half).dtype == torch.float32
    torch.testing.assert_close(to_float_images(half), torch.tensor([0.25, 0.5]))
    import spadecam.training as training

    with pytest.warns(DeprecationWarning, match="spadecam.inputs.to_float_images"):
        assert training.to_float_images is to_float_images
