"""The feature bank (spadecam.knn) and SPADE's knn_power."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spadecam import SPADE
from spadecam.io import ModelFormatError
from spadecam.knn import FeatureBank, knn_distance, pooled_features
from spadecam.models import CNNConfig, VAEConfig
from spadecam.training import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")

SIZE = 16
BANK = torch.tensor([[0.0], [1.0], [3.0]])


def test_knn_distance_by_hand():
    # 0.5 to its two nearest (0 and 1): 0.5 each
    assert knn_distance(torch.tensor([[0.5]]), BANK, 2).tolist() == [0.5]
    # a bank entry itself: its own row is skipped, nearest other is 0 at distance 1
    assert knn_distance(torch.tensor([[1.0]]), BANK, 1).tolist() == [1.0]
    # 2-D, Euclidean: (3, 4) to the origin is 5
    assert knn_distance(torch.tensor([[3.0, 4.0]]), torch.zeros(2, 2), 1).tolist() == [5.0]
    with pytest.raises(ValueError, match="knn_k"):
        knn_distance(torch.tensor([[0.0]]), BANK, 3)


def test_bank_scale_is_the_median_leave_one_out_distance():
    # own 1-NN distances: 0 -> 1, 1 -> 1, 3 -> 2; median 1
    bank = FeatureBank(BANK, layer=-2, k=1)
    assert bank.scale == 1.0
    # 2 NN: 0 -> (1+3)/2 = 2, 1 -> (1+2)/2 = 1.5, 3 -> (2+3)/2 = 2.5; median 2
    assert FeatureBank(BANK, layer=-2, k=2).scale == 2.0
    # fewer normal images than knn_k + 1: every other one is a neighbour
    assert FeatureBank(BANK, layer=-2, k=5).k == 2
    with pytest.raises(ValueError, match="at least 2 normal images"):
        FeatureBank(BANK[:1], layer=-2, k=1)
    with pytest.raises(ValueError, match="scale"):
        FeatureBank(torch.zeros(4, 2), layer=-2, k=1)


def _exact_nearest(query, bank, n):
    return torch.cdist(query, bank, compute_mode="donot_use_mm_for_euclid_dist").topk(
        n, dim=1, largest=False).values


def _counting_whole_bank(monkeypatch, bank):
    """Patch knn._exact to record how many query rows went to the whole bank."""
    from spadecam import knn

    whole: list[int] = []
    real = knn._exact

    def counting(q, b):
        if b.ndim == 2 and len(b) == len(bank):
            whole.append(len(q))
        return real(q, b)

    monkeypatch.setattr(knn, "_exact", counting)
    return whole


@pytest.mark.parametrize("offset", [0.0, 40.0])
def test_nearest_distances_are_the_exact_ones_bit_for_bit(offset, monkeypatch):
    # candidates from the matrix product, measured exactly: the k + 1 smallest
    # distances must be those of the exact all-pairs distances, bit for bit, on a bank large
    # enough for the shortcut (features far from the origin: offset 40)
    from spadecam.knn import _nearest

    g = torch.Generator().manual_seed(0)
    bank = torch.relu(torch.randn(600, 24, generator=g) + 1) * 3 + offset
    query = torch.cat([bank[:50], torch.relu(torch.randn(50, 24, generator=g)) * 3 + offset])
    want = _exact_nearest(query, bank, 6)
    whole = _counting_whole_bank(monkeypatch, bank)
    got = _nearest(query, bank, 6)
    assert torch.equal(got, want)
    assert sum(whole) < 10  # the shortcut settles (nearly) every row: the test tests it
    assert (got[:50, 0] == 0).all()  # a bank entry's own distance: exactly 0
    assert FeatureBank(bank, layer=-1, k=5).scale == float(
        _exact_nearest(bank, bank, 6)[:, 1:].mean(1).median())
    # too few candidates to hold the 6 nearest for sure: every row is measured against the
    # whole bank, and the result is still the exact one
    whole.clear()
    assert torch.equal(_nearest(query, bank, 6, candidates=6), want)
    assert sum(whole) == len(query)


def test_nearest_measures_a_row_against_the_whole_bank_when_the_shortcut_cannot_tell(
        monkeypatch):
    # every bank row at distance 1 from the query (unit vectors +-e_i around 0): the product's
    # rounding could hide a nearer row among the non-candidates, so the row is measured exactly
    from spadecam import knn

    bank = torch.cat([torch.eye(100), -torch.eye(100)])
    query = torch.cat([torch.zeros(1, 100), bank[:3] * 0.5])
    whole = _counting_whole_bank(monkeypatch, bank)
    got = knn._nearest(query, bank, 4)
    assert torch.equal(got, _exact_nearest(query, bank, 4))
    assert got[0].tolist() == [1.0] * 4
    # 0.5 e_1 is 0.5 from e_1 and sqrt(1.25) from the other unit vectors: an exact 0.5 first
    assert got[1, 0] == 0.5 and got[1, 1] == pytest.approx(1.25 ** 0.5)
    assert whole and whole[0] >= 1  # the origin's row went to the whole bank


def test_nearest_ignores_a_lower_float32_matmul_precision(monkeypatch):
    # the candidates' product runs in float64: a float32 matmul precision of "medium" (bf16
    # where the CPU has it) or "high" (TF32 on CUDA) must not change the result
    from spadecam.knn import _nearest

    g = torch.Generator().manual_seed(1)
    bank = torch.randn(400, 16, generator=g) + 20
    query = torch.randn(30, 16, generator=g) + 20
    want = _exact_nearest(query, bank, 6)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert torch.equal(_nearest(query, bank, 6), want)
    finally:
        torch.set_float32_matmul_precision(before)


def _images(seed: int, n: int, squares: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(20, 60, size=(n, SIZE, SIZE)).astype(np.uint8)
    if squares:
        for i in range(n):
            r, c = rng.integers(1, SIZE - 6, size=2)
            x[i, r : r + 5, c : c + 5] = 230
    return x


@pytest.fixture(scope="module")
def fitted():
    x = np.concatenate([_images(0, 24, False), _images(1, 8, True)])
    y = np.r_[np.zeros(24), np.ones(8)].astype(np.int64)
    train = TrainConfig(steps=20, batch_size=8, progress=False, seed=0, precision="32-true")
    det = SPADE(vae_config=VAEConfig(latent_dim=4, channels=(8, 8)),
                cnn_config=CNNConfig(channels=(8, 8, 8), kernel_sizes=(3, 3, 3),
                                     strides=(2, 1, 1)),
                vae_train=train, cnn_train=train, knn_power=2.0, precision="32",
                threshold_holdout=0.0, recipe="spadecam")
    return det.fit(x, y), x, y


def test_fit_builds_the_bank_from_the_training_normals(fitted):
    det, x, y = fitted
    assert det.knn_ is not None and det.knn_.features.shape[0] == 24
    assert det.knn_.layer == -1 and det.knn_.k == 5
    feats = pooled_features(det.cnn_, torch.as_tensor(x[y == 0][:, None]).float() / 255, -1)
    torch.testing.assert_close(det.knn_.features, feats, rtol=1e-5, atol=1e-6)


def test_score_is_the_weighted_error_times_the_distance_to_the_power(fitted):
    det, _, _ = fitted
    u = _images(2, 6, True)
    plain = SPADE.from_models(det.vae_, det.cnn_, precision="32", knn_power=0.0, recipe="spadecam")
    d = det.knn_(det.cnn_.eval(), torch.as_tensor(u[:, None]).float() / 255)
    want = plain.decision_function(u) * d.double().numpy() ** 2
    np.testing.assert_allclose(det.decision_function(u), want, rtol=1e-5)
    # a training normal is measured against the others, not against itself (distance 0)
    assert float(det.knn_(det.cnn_, torch.as_tensor(_images(0, 1, False)[:, None]) / 255.0)) > 0


@pytest.mark.parametrize("method", ["closed_form", "autograd"])
@pytest.mark.parametrize("layer", [-1, -2, 0])
def test_grad_cam_pass_reads_the_bank_features_of_the_same_forward(fitted, method, layer):
    from spadecam.cam import grad_cam_and_logits, grad_cam_logits_features

    det, _, _ = fitted
    u = torch.as_tensor(_images(4, 5, True)[:, None]).float() / 255
    cnn = det.cnn_.eval()
    m, logits, pooled = grad_cam_logits_features(cnn, u, -1, method=method, feature_layer=layer)
    m0, logits0 = grad_cam_and_logits(cnn, u, -1, method=method)
    torch.testing.assert_close(m, m0, rtol=0, atol=0)
    torch.testing.assert_close(logits, logits0, rtol=0, atol=0)
    assert pooled is not None and pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, pooled_features(cnn, u, layer), rtol=1e-6, atol=1e-7)
    assert grad_cam_logits_features(cnn, u, -1, method=method)[2] is None


def test_scoring_with_the_bank_runs_each_classifier_block_once_per_image(fitted):
    det, _, _ = fitted
    u = _images(5, 6, True)
    seen: list[int] = []
    hooks = [b.register_forward_hook(lambda _m, i, _o: seen.append(i[0].shape[0]))
             for b in det.cnn_.features]
    try:
        scores = det.decision_function(u)
    finally:
        for h in hooks:
            h.remove()
    # one forward of u and u_hat together (2N images) through each block; no second pass of u
    # for the bank's features
    assert seen == [2 * len(u)] * len(det.cnn_.features)
    d = det.knn_(det.cnn_.eval(), torch.as_tensor(u[:, None]).float() / 255)
    plain = SPADE.from_models(det.vae_, det.cnn_, precision="32", knn_power=0.0, recipe="spadecam")
    np.testing.assert_allclose(scores, plain.decision_function(u) * d.double().numpy() ** 2,
                               rtol=1e-5)


def test_save_and_load_keep_the_bank(fitted, tmp_path):
    det, _, _ = fitted
    det.save(tmp_path / "m")
    assert (tmp_path / "m" / "knn.safetensors").is_file()
    back = SPADE.load(tmp_path / "m")
    assert back.knn_.scale == det.knn_.scale and back.knn_power == 2.0
    # a directory saved before the feature bank (no knn_power, no bank) scores without it
    cfg = (tmp_path / "m" / "config.json")
    old = json.loads(cfg.read_text())
    del old["detector"]["params"]["knn_power"], old["knn"]
    old["weights_sha256"].pop("knn.safetensors")
    (tmp_path / "old").mkdir()
    for f in ("vae.safetensors", "cnn.safetensors"):
        (tmp_path / "old" / f).write_bytes((tmp_path / "m" / f).read_bytes())
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    legacy = SPADE.load(tmp_path / "old")
    assert legacy.knn_ is None and legacy.knn_power == 0.0
    u = _images(3, 4, True)
    np.testing.assert_array_equal(back.decision_function(u), det.decision_function(u))
    (tmp_path / "m" / "knn.safetensors").write_bytes(b"broken")
    with pytest.raises(ModelFormatError, match="knn.safetensors"):
        SPADE.load(tmp_path / "m")


def test_knn_power_needs_a_bank_and_a_valid_value(fitted):
    det, _, _ = fitted
    # the default (knn_power 1) around trained models needs the normal images for its bank
    with pytest.raises(ValueError, match="x_normal"):
        SPADE.from_models(det.vae_, det.cnn_, recipe="spadecam")
    made = SPADE.from_models(det.vae_, det.cnn_, x_normal=_images(0, 24, False)[:, None], recipe="spadecam")
    assert made.knn_ is not None and made.knn_power is None and made._param("knn_power") == 1.0
    with pytest.raises(ValueError, match="knn_power"):
        SPADE(knn_power=-1.0, recipe="spadecam").fit(np.zeros((4, SIZE, SIZE), np.uint8), np.r_[0, 0, 1, 1])
    with pytest.raises(ValueError, match="knn_layer"):
        SPADE(knn_layer=7, cnn_config=CNNConfig(), recipe="spadecam").fit(np.zeros((4, SIZE, SIZE), np.uint8),
                                                       np.r_[0, 0, 1, 1])


def test_cli_train_with_knn_power_saves_a_bank_that_scoring_uses(tmp_path):
    from _own_images import make_folders
    from spadecam import workflow
    from spadecam.cli import main

    folders = make_folders(tmp_path / "data", n_normal=16, n_anomaly=6, n_test=3)
    main(["train", "--recipe", "spadecam", "--normal", str(folders["train/good"]), "--anomaly",
          str(folders["train/defect"]), "--out", str(tmp_path / "m"), "--image-size", "16",
          "--latent-dim", "4", "--batch-size", "8", "--epochs", "2", "--knn-power", "1",
          "--no-progress"])
    det = SPADE.load(tmp_path / "m")
    assert det.knn_ is not None and det.knn_power == 1.0
    assert det.knn_.features.shape[0] == 16 - round(16 * 0.1)  # the held-out normals apart
    rows = workflow.score(tmp_path / "m", [folders["test/good"], folders["test/defect"]],
                          tmp_path / "scores.csv", progress=False)
    assert len(rows) == 6 and all(np.isfinite(float(r["score"])) for r in rows)
