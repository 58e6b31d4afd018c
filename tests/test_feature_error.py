"""The feature-space error map: PatchCore-style locally aware patch features of a frozen
pretrained backbone, a seeded bounded memory bank of normal patches, and each patch's distance
to its nearest bank patch, upsampled to the image."""

from __future__ import annotations

import pytest
import torch

from spadecam.feature_error import PatchBank, PatchFeatures, build_patch_bank
from spadecam.models.efficientnet import EfficientNetLiteClassifier, EfficientNetLiteConfig

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def extractor() -> PatchFeatures:
    net = EfficientNetLiteClassifier(EfficientNetLiteConfig(in_channels=1)).load_imagenet()
    return PatchFeatures(net)


def _images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = 0.4 + 0.05 * torch.randn(n, 1, size, size, generator=g)
    x[:, :, :, :: 8] = 0.15  # bus-bar-like stripes: a regular texture
    return x.clamp(0, 1)


def test_patch_features_are_stages_3_and_5_averaged_and_on_one_grid(extractor):
    u = _images(2)
    f = extractor(u)
    assert f.shape == (2, 40 + 112, 8, 8)  # stride 8 at 64 px
    # each layer's part is its block output, 3 x 3 averaged (no padding counted)
    with torch.no_grad():
        h = u
        for i in range(4):
            h = extractor.blocks[i](h)
    ref = torch.nn.functional.avg_pool2d(h, 3, 1, 1, count_include_pad=False)
    torch.testing.assert_close(f[:, :40], ref)
    assert not any(p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert not extractor.training  # frozen, batch norm too


def test_distances_are_the_nearest_bank_patch_by_brute_force(extractor, monkeypatch):
    g = torch.Generator().manual_seed(1)
    bank = PatchBank(torch.randn(5000, 152, generator=g), extractor)
    q = torch.randn(2, 152, 3, 4, generator=g)
    want = torch.cdist(q.permute(0, 2, 3, 1).reshape(-1, 152), bank.features).amin(1).view(2, 3, 4)
    torch.testing.assert_close(bank.distances(q), want, rtol=1e-4, atol=1e-4)
    import spadecam.feature_error as fe

    monkeypatch.setattr(fe, "is_exporting", lambda: True)  # the exported graph's one product
    torch.testing.assert_close(bank.distances(q), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="query patches have 7 features but the bank 152"):
        bank.distances(torch.zeros(1, 7, 2, 2))


def test_a_defect_stands_out_where_it_is_and_the_bank_is_bounded_and_seeded(extractor):
    normal = _images(12)
    batches = [(normal[i : i + 4], None) for i in range(0, 12, 4)]
    bank = build_patch_bank(extractor, batches, 12, bank_size=500, seed=3)
    assert bank.features.shape == (500, 152)
    again = build_patch_bank(extractor, batches, 12, bank_size=500, seed=3)
    torch.testing.assert_close(again.features, bank.features)  # the seed decides the draw
    every = build_patch_bank(extractor, batches, 12, bank_size=10**6)
    assert len(every.features) == 12 * 64  # fewer patches than asked: all of them
    test = _images(1, seed=9)
    test[:, :, 40:52, 8:20] = 0.95  # a bright defect in the lower left
    e = bank.error_map(test)
    assert e.shape == (1, 1, 64, 64) and (e >= 0).all()
    inside, outside = e[0, 0, 40:52, 8:20].mean(), e[0, 0, :24, 36:].mean()
    assert inside > 2 * outside
    # letterbox padding: zero error there, and padding patches never enter the bank
    valid = torch.ones(1, 1, 64, 64)
    valid[..., :, 48:] = 0
    assert (bank.error_map(test, valid)[..., 48:] == 0).all()
    padded = build_patch_bank(extractor, [(normal[:4], valid.expand(4, -1, -1, -1))], 4,
                              bank_size=10**6)
    assert len(padded.features) == 4 * 8 * 6  # 6 of the 8 patch columns lie on the image
    with pytest.raises(ValueError, match="held 4 images, not n_images=5"):
        build_patch_bank(extractor, [(normal[:4], None)], 5)


def test_spade_with_the_feature_error_fits_saves_loads_and_exports(tmp_path):
    """SPADE(error="feature"): e is the patch distance map, weighted by the ROI as the
    reconstruction error is; the bank and its frozen backbone go into the model directory
    (checked on load) and into the ONNX graph."""
    import json

    import numpy as np

    from spadecam import SPADE
    from spadecam.detectors import load_detector
    from spadecam.exceptions import ModelFormatError
    from spadecam.models import CNNConfig, VAEConfig
    from spadecam.training import TrainConfig

    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(100, 10, (28, 32, 32)), 0, 255).astype(np.uint8)
    x[:, :, ::8] = 40
    x[20:, 18:26, 10:18] = 240
    y = np.r_[np.zeros(20), np.ones(8)]
    train = TrainConfig(epochs=1, batch_size=8, progress=False, seed=0)
    det = SPADE(image_size=32, vae_config=VAEConfig(latent_dim=4, channels=(4, 8)),
                cnn_config=CNNConfig(channels=(4, 8), kernel_sizes=(3, 3), strides=(2, 2)),
                vae_train=train, cnn_train=train, precision="32", batch_size=8,
                error="feature", patch_bank_size=200, recipe="spadecam").fit(x, y)
    assert det.patch_bank_ is not None and det.patch_bank_.features.shape == (200, 152)
    scores, maps = det.decision_function_and_map(x[:6])
    # e' is e x L / |L| with e the patch distances: its sum is the score (images at the
    # model's side)
    np.testing.assert_allclose(maps.reshape(6, -1).sum(1), scores, rtol=1e-5)
    det.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["patch"] == {"layers": [3, 5], "pool": 3, "stride": 1, "in_channels": 1}
    assert saved["detector"]["params"]["error"] == "feature"
    np.testing.assert_array_equal(load_detector(tmp_path / "m").decision_function(x[:6]), scores)
    pytest.importorskip("onnxruntime")
    from spadecam.deploy import OnnxSPADE, export_onnx

    onnx = OnnxSPADE(export_onnx(tmp_path / "m", tmp_path / "m.onnx"))
    assert onnx.metadata["patch_bank_shape"] == [200, 152]
    np.testing.assert_allclose(onnx.decision_function(x[:6]), scores, rtol=1e-4,
                               atol=1e-4 * np.abs(scores).max())
    # a bank of another width is refused naming the file
    from safetensors.torch import load_file, save_file

    t = load_file(tmp_path / "m" / "patch.safetensors")
    t["bank"] = torch.zeros(200, 7)
    save_file(t, tmp_path / "m" / "patch.safetensors")
    import hashlib

    saved["weights_sha256"]["patch.safetensors"] = hashlib.sha256(
        (tmp_path / "m" / "patch.safetensors").read_bytes()).hexdigest()
    (tmp_path / "m" / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ModelFormatError, match=r"patch.safetensors does not fit .*\(M, 152\)"):
        load_detector(tmp_path / "m")


def _tiny_feature_spade(**kw):
    from spadecam import SPADE
    from spadecam.models import CNNConfig, VAEConfig
    from spadecam.training import TrainConfig

    train = TrainConfig(epochs=1, batch_size=8, progress=False, seed=0)
    return SPADE(image_size=32, vae_config=VAEConfig(latent_dim=4, channels=(4, 8)),
                 cnn_config=CNNConfig(channels=(4, 8), kernel_sizes=(3, 3), strides=(2, 2)),
                 vae_train=train, cnn_train=train, precision="32", batch_size=8,
                 **{"error": "feature", **kw}, recipe="spadecam")


def test_letterbox_padding_never_enters_the_bank_and_rngs_are_left_alone(tmp_path):
    """fit passes the training images' letterbox mask to the bank (padding patches, black,
    would make dark defects look normal); fit, save and load leave the global RNG alone."""
    import numpy as np

    from spadecam.detectors import load_detector

    rng = np.random.default_rng(0)
    x = [np.clip(rng.normal(120, 10, (32, 16)), 0, 255).astype(np.uint8) for _ in range(24)]
    y = np.r_[np.zeros(18), np.ones(6)]
    state = torch.get_rng_state()
    det = _tiny_feature_spade(patch_bank_size=10**6, threshold_holdout=0.0).fit(x, y)
    # 32 x 16 letterboxed into 32 x 32: the middle half of the 4 x 4 grid lies on the image
    assert len(det.patch_bank_.features) == 18 * 4 * 2
    det.save(tmp_path / "m")
    load_detector(tmp_path / "m")
    assert torch.equal(torch.get_rng_state(), state)


def test_what_the_feature_error_cannot_use_is_refused_before_any_training(monkeypatch):
    import numpy as np

    import spadecam.detectors.spade as spade_module

    def no_training(*_a, **_k):
        raise AssertionError("training started")

    monkeypatch.setattr(spade_module, "train_vae", no_training)
    rgba = np.zeros((12, 32, 32, 4), np.uint8)
    with pytest.raises(ValueError, match=r"error='feature' reads grey \(1\) or colour \(3\)"):
        _tiny_feature_spade().fit(rgba, np.r_[np.zeros(9), np.ones(3)])
    from spadecam.models.efficientnet import PretrainedWeightsError
    from spadecam.models.resnet import ResNetConfig

    det = _tiny_feature_spade()
    det.cnn_config = ResNetConfig(widths=(4, 8), blocks=(1, 1), weights="/nonexistent.pth")
    with pytest.raises(PretrainedWeightsError, match="nonexistent.pth: no such weights file"):
        det.fit(np.zeros((12, 32, 32), np.uint8), np.r_[np.zeros(9), np.ones(3)])


def test_a_bad_patch_section_is_one_error_naming_the_key(tmp_path):
    import json

    from spadecam.io import read_config

    (tmp_path / "config.json").write_text(json.dumps({
        "format_version": 1, "patch": {"layers": "35", "pool": 3, "in_channels": 1}}))
    from spadecam.exceptions import ModelFormatError

    with pytest.raises(ModelFormatError, match=r"patch.layers must be a non-empty list"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({
        "format_version": 1, "patch": {"layers": [3, 5], "pool": 2, "in_channels": 1}}))
    with pytest.raises(ModelFormatError, match=r"patch.pool must be an odd integer"):
        read_config(tmp_path)


def test_a_reconstruction_fit_asked_for_the_feature_error_says_so():
    import numpy as np

    det = _tiny_feature_spade(error="reconstruction", knn_power=0)
    x = np.clip(np.random.default_rng(0).normal(90, 9, (12, 32, 32)), 0, 255).astype(np.uint8)
    det.fit(x, np.r_[np.zeros(9), np.ones(3)])
    det.set_params(error="feature")
    with pytest.raises(ValueError, match="has no patch bank"):
        det.decision_function(x[:2])


def test_a_coarser_patch_grid_averages_blocks_of_cells_and_round_trips(extractor, tmp_path):
    """stride 2: each patch the mean of a 2 x 2 block of the finest grid's cells (14 x 14 at
    224 px); SPADE(patch_stride=2) saves it in the patch section and loads it back."""
    import numpy as np

    from spadecam.detectors import load_detector

    u = _images(2)
    net = EfficientNetLiteClassifier(EfficientNetLiteConfig(in_channels=1)).load_imagenet()
    coarse = PatchFeatures(net, stride=2)
    assert coarse(u).shape[-2:] == (4, 4) and extractor(u).shape[-2:] == (8, 8)
    torch.testing.assert_close(coarse(u), torch.nn.functional.avg_pool2d(extractor(u), 2))
    with pytest.raises(ValueError, match="stride must be >= 1"):
        PatchFeatures(net, stride=0)
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(100, 10, (24, 32, 32)), 0, 255).astype(np.uint8)
    x[18:, 8:16, 8:16] = 240
    det = _tiny_feature_spade(patch_stride=2, patch_bank_size=10**6).fit(
        x, np.r_[np.zeros(18), np.ones(6)])
    assert det.patch_bank_.extractor.stride == 2
    det.save(tmp_path / "m")
    back = load_detector(tmp_path / "m")
    assert back.patch_bank_.extractor.stride == 2
    np.testing.assert_array_equal(back.decision_function(x), det.decision_function(x))


def test_large_batches_run_the_backbone_a_chunk_at_a_time_with_the_same_maps(extractor,
                                                                             monkeypatch):
    """The backbone's activations cost ~16 MB per 224-px image: a scoring batch runs it
    IMAGE_CHUNK images at a time (eager mode), giving the maps a whole batch gives (to fp32
    rounding: the convolution kernels may sum in another order for another batch size)."""
    import spadecam.feature_error as fe

    u = _images(5)
    whole = extractor(u)
    calls = []
    real = extractor.blocks[0].forward

    def counting(x):
        calls.append(len(x))
        return real(x)

    monkeypatch.setattr(fe, "IMAGE_CHUNK", 2)
    monkeypatch.setattr(extractor.blocks[0], "forward", counting)
    chunked = extractor(u)
    assert calls == [2, 2, 1]
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-4)


def test_a_head_fitted_alone_shares_one_forward_with_the_patch_extractor(monkeypatch):
    """SPADE()'s default classifier is the frozen ImageNet backbone under a head fitted alone:
    its first blocks ARE the patch extractor's, so the score runs the backbone once (the
    trunk in fp32, then the rest and the head) and gets what the two forwards give, a chunk
    at a time for large batches; a classifier whose blocks differ (fine-tuned) runs both."""
    import copy

    import spadecam.feature_error as fe
    import spadecam.scoring as sc
    from spadecam import SPADE
    from spadecam.scoring import scoring_context
    from spadecam.training import TrainConfig

    x = (_images(24, 32) * 255).round().to(torch.uint8)[:, 0].numpy()
    x[18:, 8:16, 8:16] = 250
    y = [0] * 18 + [1] * 6
    det = SPADE(image_size=32, patch_bank_size=300, precision="32", batch_size=8,
                threshold_holdout=0.25,
                cnn_train=TrainConfig(head_only=True, progress=False)).fit(x, y)
    scorer = det.scorer()
    ext = det.patch_bank_.extractor
    assert det.recipe == "pretrained" and ext.shares_blocks_with(det.cnn_)
    # the image-level bank's rows are the pooled features the head was fitted on: the
    # training normals' (the hold-out left out), as build_feature_bank would compute them
    from spadecam.knn import pooled_features

    yt = torch.as_tensor(y)
    kept = torch.as_tensor(x)[(yt == 0) & ~det._threshold_split(yt.long())]
    with torch.inference_mode():
        want_bank = pooled_features(det.cnn_, kept[:, None].float() / 255, -1)
    torch.testing.assert_close(det.knn_.features, want_bank, rtol=1e-4, atol=1e-5)
    u = _images(5, 32, seed=3)
    forwards = []
    real = det.cnn_.features[0].forward
    monkeypatch.setattr(det.cnn_.features[0], "forward",
                        lambda v: forwards.append(len(v)) or real(v))
    monkeypatch.setattr(fe, "IMAGE_CHUNK", 2)  # every backbone pass chunks by it
    with scoring_context("32", scorer):
        e, top, logit, d = scorer.margin_parts(u)
    # one forward of the classifier's stem per chunk, no other: the image-level bank's
    # pooled features too come from it
    assert forwards == [2, 2, 1]
    with torch.inference_mode():
        want_e = det.patch_bank_.error_map(u).sum(dim=1)
        want_logit = sc.cnn_score(det.cnn_(u))
        want_d = det.knn_(det.cnn_, u)
    torch.testing.assert_close(d, want_d, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(e, want_e, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logit, want_logit, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(top, want_e.flatten(1).amax(dim=1))
    tuned = copy.deepcopy(det.cnn_)
    with torch.no_grad():
        tuned.features[2][0].project.weight.add_(1e-3)
    assert not ext.shares_blocks_with(tuned)
    assert not ext.shares_blocks_with(torch.nn.Linear(2, 2))
