"""The margin fusion (spadecam.fusion, SPADE(score="margin")): the one-class error score plus
the classifier's evidence only beyond a margin, both in units of held-out normal images'
spread; the "pretrained" recipe that uses it trains no VAE."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spadecam.fusion import EvidenceCalibration, calibrate, error_term, margin_score

pytestmark = pytest.mark.usefixtures("single_thread")


def test_calibration_is_the_normals_mean_and_spread_and_refuses_what_it_cannot_use():
    e, lg = np.array([1.0, 2.0, 3.0, 6.0]), np.array([-2.0, -1.0, 0.0, -1.0])
    c = calibrate(e, lg)
    assert (c.error_mean, c.logit_mean, c.n_images, c.source) == (3.0, -1.0, 4, "held_out")
    assert c.error_std == pytest.approx(np.std(e)) and c.logit_std == pytest.approx(np.std(lg))
    # identical scores: a tiny spread instead of a division by zero
    flat = calibrate([5.0, 5.0], [1.0, 2.0])
    assert 0 < flat.error_std <= 1e-5
    for bad in (([1.0], [1.0]), ([1.0, 2.0], [1.0]), ([1.0, np.nan], [0.0, 0.0])):
        with pytest.raises(ValueError, match="calibration"):
            calibrate(*bad)
    assert EvidenceCalibration.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="positive standard deviations"):
        EvidenceCalibration(0.0, 0.0, 0.0, 1.0, 3)
    with pytest.raises(ValueError, match="missing or malformed field"):
        EvidenceCalibration.from_dict({"error_mean": 1.0})


def test_the_evidence_counts_only_beyond_the_margin_and_never_lowers_a_score():
    c = EvidenceCalibration(error_mean=10.0, error_std=2.0, logit_mean=-3.0, logit_std=0.5,
                            n_images=20)
    error = torch.tensor([10.0, 14.0, 10.0, 10.0])
    # logits at the normals' mean, at 2 sd (inside a margin of 3), at 5 sd and at 9 sd
    logit = torch.tensor([-3.0, -2.0, -0.5, 1.5])
    s = margin_score(error, logit, c, weight=0.5, margin=3.0)
    torch.testing.assert_close(s, torch.tensor([0.0, 2.0, 0.5 * 2.0, 0.5 * 6.0]))
    # the one-class term alone is a lower bound: the labels never subtract
    assert (s >= (error - 10.0) / 2.0).all()
    torch.testing.assert_close(margin_score(error, logit, c, 0.0, 3.0), (error - 10.0) / 2.0)


def test_the_image_level_bank_joins_the_error_term_in_held_out_units():
    """With the bank's distances, the one-class term is (z_e + w z_d) / sd(z_e + w z_d) over
    the calibration images: mean 0 and spread 1 there, as z_e alone is; the calibration
    round-trips, is refused in part, and the score refuses a distance it was not made with
    (or none when it was)."""
    e = np.array([1.0, 2.0, 3.0, 6.0])
    lg = np.array([-2.0, -1.0, 0.0, -1.0])
    d = np.array([1.0, 1.0, 2.0, 0.0])
    c = calibrate(e, lg, knn_distances=d, knn_weight=0.5)
    assert c.uses_bank and (c.knn_mean, c.knn_weight) == (1.0, 0.5)
    z_e = (e - 3.0) / np.std(e)
    z_d = (d - 1.0) / np.std(d)
    assert c.knn_std == pytest.approx(np.std(d))
    assert c.joint_std == pytest.approx(np.std(z_e + 0.5 * z_d))
    term = error_term(torch.as_tensor(e), c, torch.as_tensor(d)).double().numpy()
    np.testing.assert_allclose(term, (z_e + 0.5 * z_d) / np.std(z_e + 0.5 * z_d), rtol=1e-6)
    assert term.mean() == pytest.approx(0.0, abs=1e-6) and term.std() == pytest.approx(1.0)
    # an image at the normals' mean patch maximum (z_e = 0) but far from every normal
    # image in the bank's features scores above a typical normal's 0
    assert error_term(torch.tensor([3.0]), c, torch.tensor([5.0])).item() > 1.0
    # the evidence adds to the joint term as it adds to z_e
    s = margin_score(torch.as_tensor(e), torch.as_tensor(lg), c, 2.0, 0.0, torch.as_tensor(d))
    z_c = (lg - lg.mean()) / np.std(lg)
    np.testing.assert_allclose(s.double().numpy(), term + 2.0 * np.maximum(z_c, 0), rtol=1e-5,
                               atol=1e-6)
    assert EvidenceCalibration.from_dict(c.to_dict()) == c
    assert not calibrate(e, lg).uses_bank  # and an old file's section has no bank fields
    old = {k: v for k, v in calibrate(e, lg).to_dict().items() if "knn" not in k
           and k != "joint_std"}
    assert EvidenceCalibration.from_dict(old) == calibrate(e, lg)
    with pytest.raises(ValueError, match="without the image-level bank"):
        error_term(torch.as_tensor(e), calibrate(e, lg), torch.as_tensor(d))
    with pytest.raises(ValueError, match="with the image-level bank"):
        margin_score(torch.as_tensor(e), torch.as_tensor(lg), c, 1.0, 3.0)
    with pytest.raises(ValueError, match="image-level bank needs"):
        EvidenceCalibration(0.0, 1.0, 0.0, 1.0, 3, "held_out", knn_mean=1.0)
    with pytest.raises(ValueError, match="knn_weight must be > 0"):
        calibrate(e, lg, knn_distances=d, knn_weight=0.0)
    with pytest.raises(ValueError, match="kNN distances"):
        calibrate(e, lg, knn_distances=d[:3])


def test_a_scorer_refuses_a_calibration_made_with_another_bank_weight():
    from spadecam.knn import FeatureBank
    from spadecam.models import CNNConfig
    from spadecam.scoring import SPADEScorer
    from spadecam.training import build_classifier

    cnn = build_classifier(CNNConfig(channels=(4, 8), kernel_sizes=(3, 3), strides=(2, 2)), 1, 0)
    bank = FeatureBank(torch.randn(10, 8, generator=torch.Generator().manual_seed(0)), -1)
    e, lg = [1.0, 2.0, 4.0], [0.0, 1.0, 0.5]
    with_bank = calibrate(e, lg, knn_distances=[1.0, 2.0, 1.5], knn_weight=1.0)
    with pytest.raises(ValueError, match="made with knn_power 1, the scorer has 2"):
        SPADEScorer(None, cnn, knn=bank, knn_power=2.0, score="margin", calibration=with_bank)
    with pytest.raises(ValueError, match="made with knn_power 0, the scorer has 1"):
        SPADEScorer(None, cnn, knn=bank, knn_power=1.0, score="margin",
                    calibration=calibrate(e, lg))
    SPADEScorer(None, cnn, knn=bank, knn_power=1.0, score="margin", calibration=with_bank)


def _images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.clip(rng.normal(100, 10, (n, 32, 32)), 0, 255).astype(np.uint8)
    x[:, :, ::8] = 40  # a regular texture
    return x


def _pretrained_spade(**kw):
    from spadecam import SPADE
    from spadecam.models import CNNConfig
    from spadecam.training import TrainConfig

    train = TrainConfig(epochs=2, batch_size=8, progress=False, seed=0)
    return SPADE(**{"recipe": "pretrained", "image_size": 32, "cnn_train": train,
                    "precision": "32", "batch_size": 8, "patch_bank_size": 300,
                    "cnn_config": CNNConfig(channels=(4, 8), kernel_sizes=(3, 3),
                                            strides=(2, 2)), **kw})


def test_the_pretrained_recipe_trains_no_vae_calibrates_on_held_out_normals_and_round_trips(
        tmp_path, monkeypatch):
    """recipe="pretrained": the feature error and the margin fusion; no VAE is trained (none
    reads a reconstruction); calibration_ is the held-out normals' statistics, so a held-out
    normal's score is its z-scored error plus at most its own excess evidence; the model
    directory and the ONNX graph give the same scores."""
    import spadecam.detectors.spade as spade_module
    from spadecam.detectors import load_detector

    def no_vae(*_a, **_k):
        raise AssertionError("a VAE was trained")

    monkeypatch.setattr(spade_module, "train_vae", no_vae)
    x = _images(40)
    x[30:, 10:20, 10:20] = 250  # the known kind: a bright square
    y = np.r_[np.zeros(30), np.ones(10)]
    from spadecam._progress import SpadecamWarning

    with pytest.warns(SpadecamWarning, match=r"rest on only 3 held-out normal image\(s\)"):
        det = _pretrained_spade().fit(x, y)
    assert det.vae_ is None and det._param("error") == "feature"
    cal = det.calibration_
    assert cal.source == "held_out" and cal.n_images == 3  # a tenth of 30 normals
    hold = det._threshold_split(torch.as_tensor(y).long())
    held = x[(hold & (torch.as_tensor(y) == 0)).numpy()]
    scorer = det.scorer()
    u = torch.as_tensor(held)[:, None].float() / 255
    with torch.no_grad():
        e, err, logit, d = scorer.margin_parts(u)
    assert err.double().mean().item() == pytest.approx(cal.error_mean, rel=1e-5)
    assert logit.double().mean().item() == pytest.approx(cal.logit_mean, rel=1e-5, abs=1e-6)
    # the recipe's image-level bank (knn_power 1): its distances calibrated on the same
    # images, and the one-class term in units of a held-out normal's spread (mean 0, sd 1)
    assert det.knn_ is not None and cal.uses_bank and cal.knn_weight == 1.0
    assert d.double().mean().item() == pytest.approx(cal.knn_mean, rel=1e-5)
    term = error_term(err, cal, d).double()
    assert term.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert term.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-4)
    scores = det.decision_function(x)
    held_scores = det.decision_function(held)
    assert (held_scores >= term.numpy() - 1e-4).all()
    # the map is e, whose maximum is the error map's term
    maps = det.anomaly_map(x[:4])
    with torch.no_grad():
        e4, err4, _, _ = scorer.margin_parts(torch.as_tensor(x[:4])[:, None].float() / 255)
    np.testing.assert_allclose(maps.reshape(4, -1).max(1), err4.numpy(), rtol=1e-5)
    det.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["calibration"]["n_images"] == 3 and "vae_config" not in saved
    assert saved["calibration"]["joint_std"] == pytest.approx(cal.joint_std)
    assert (tmp_path / "m" / "knn.safetensors").exists()
    assert saved["detector"]["params"]["score"] == "margin"
    assert not (tmp_path / "m" / "vae.safetensors").exists()
    np.testing.assert_array_equal(load_detector(tmp_path / "m").decision_function(x), scores)
    pytest.importorskip("onnxruntime")
    from spadecam.deploy import OnnxSPADE, export_onnx

    onnx = OnnxSPADE(export_onnx(tmp_path / "m", tmp_path / "m.onnx"))
    np.testing.assert_allclose(onnx.decision_function(x), scores, rtol=1e-4,
                               atol=1e-4 * np.abs(scores).max())


def test_without_a_hold_out_the_training_normals_calibrate_with_a_warning():
    from spadecam._progress import SpadecamWarning

    x = _images(24)
    x[18:, 8:16, 8:16] = 250
    with pytest.warns(SpadecamWarning, match="threshold_holdout=0"):
        det = _pretrained_spade(threshold_holdout=0.0).fit(x, np.r_[np.zeros(18), np.ones(6)])
    assert det.calibration_.source == "train" and det.calibration_.n_images == 18


def test_scoring_without_a_calibration_and_a_bad_calibration_section_are_refused(tmp_path):
    from spadecam.detectors import load_detector
    from spadecam.exceptions import ModelFormatError, NotFittedError

    x = _images(24)
    x[18:, 8:16, 8:16] = 250
    det = _pretrained_spade().fit(x, np.r_[np.zeros(18), np.ones(6)])
    det.save(tmp_path / "m")
    saved_text = (tmp_path / "m" / "config.json").read_text()
    det.calibration_ = None
    with pytest.raises(NotFittedError, match="calibration_"):
        det.decision_function(x[:2])
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["calibration"]["logit_std"] = 0
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match=r"calibration.logit_std must be a finite number > 0"):
        load_detector(tmp_path / "m")
    del config["calibration"]["logit_std"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match=r"calibration.logit_std"):
        load_detector(tmp_path / "m")
    # the image-level bank's statistics: all or none, each in its range
    config = json.loads(saved_text)
    config["calibration"]["joint_std"] = None
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match=r"calibration.knn_mean must be knn_mean, knn_std"):
        load_detector(tmp_path / "m")
    config["calibration"]["joint_std"] = -1.0
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match=r"calibration.joint_std must be a finite number"):
        load_detector(tmp_path / "m")
    # a calibration made without the bank, for a detector scoring with it: refused by name
    config = json.loads(saved_text)
    for k in ("knn_mean", "knn_std", "joint_std", "knn_weight"):
        del config["calibration"][k]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match=r"calibration was made with knn_power 0"):
        load_detector(tmp_path / "m")


def test_a_vae_less_spade_refuses_a_score_that_reads_a_reconstruction():
    from spadecam import SPADE
    from spadecam.models import CNNConfig
    from spadecam.models.cnn import ConvClassifier

    cnn = ConvClassifier(CNNConfig(channels=(4, 8), kernel_sizes=(3, 3), strides=(2, 2)))
    with pytest.raises(ValueError, match="vae is None"):
        SPADE.from_models(None, cnn, image_size=32, recipe="spadecam")  # Algorithm 1 needs the reconstruction
    with pytest.raises(ValueError, match="vae is None"):
        SPADE.from_models(None, cnn, recipe="pretrained", x_normal=_images(4)[:, None])


def test_spadecam_train_says_what_it_does_every_interval_even_without_progress(
        tmp_path, capsys, monkeypatch):
    """`spadecam train --no-progress`: a line at least every HEARTBEAT_SECONDS (30) while it
    reads, builds the bank, fits the head, calibrates and sets the threshold (the interval
    set to 0 here, so every step writes one); the Python API outside the CLI writes none."""
    import spadecam._progress as progress
    from _own_images import make_folders
    from spadecam.cli import main

    folders = make_folders(tmp_path / "data", n_normal=24, n_anomaly=6, n_test=2)
    monkeypatch.setattr(progress, "HEARTBEAT_SECONDS", 0.0)
    assert main(["train", "--normal", str(folders["train/good"]), "--anomaly",
                 str(folders["train/defect"]), "--out", str(tmp_path / "m"), "--recipe",
                 "pretrained", "--image-size", "32", "--no-progress"]) == 0
    err = capsys.readouterr().err
    for what in ("reading images:", "patch bank: features of", "classifier head: pooled",
                 "calibration:", "threshold: scored"):
        assert what in err, what
    assert json.loads((tmp_path / "m" / "config.json").read_text())["calibration"]
    # no heartbeat outside the CLI
    x = _images(24)
    x[18:, 8:16, 8:16] = 250
    _pretrained_spade().fit(x, np.r_[np.zeros(18), np.ones(6)])
    assert "patch bank: features of" not in capsys.readouterr().err


def test_every_tensor_a_loaded_detector_holds_moves_with_the_inferencer(tmp_path, tiny_model):
    """TorchInferencer.to (the detector's own .to) moves the networks AND the memory banks
    (patch and image-level): checked on the `meta` device, tensor by tensor, for the
    pretrained recipe's detector and for a from-scratch one (VAE, classifier, feature bank)."""
    from spadecam.deploy.torch_inferencer import TorchInferencer

    x = _images(24)
    x[18:, 8:16, 8:16] = 250
    _pretrained_spade().fit(x, np.r_[np.zeros(18), np.ones(6)]).save(tmp_path / "pre")
    for model_dir, held in ((tmp_path / "pre", ("cnn_", "knn_", "patch_bank_")),
                            (tiny_model[0], ("vae_", "cnn_", "knn_"))):
        inf = TorchInferencer.load(model_dir).to("meta")
        det = inf.detector
        tensors = {}
        for attr in held:
            module = getattr(det, attr)
            assert module is not None, (model_dir, attr)
            tensors.update({f"{attr}.{k}": v for k, v in module.state_dict().items()})
        for attr, value in vars(det).items():  # nothing else the detector holds is a tensor
            assert not isinstance(value, torch.Tensor), attr
        assert tensors and all(t.device.type == "meta" for t in tensors.values()), [
            k for k, t in tensors.items() if t.device.type != "meta"]
