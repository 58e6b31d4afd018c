"""The reproduction driver on a tiny real-MNIST slice: files, columns, rows, determinism."""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import pytest
import torch

from spadecam.bench.configs import noisy_mnist_benchmark
from spadecam.bench.reproduce import ABLATIONS, run_noisy_mnist
from spadecam.bench.tables import METHODS, RESULT_COLUMNS
from spadecam.models.cnn import CNNConfig
from spadecam.models.vae import VAEConfig

DATA = Path(os.environ.get("SPADECAM_DATA", Path(__file__).resolve().parents[2] / "shared/data/mnist"))
pytestmark = pytest.mark.skipif(
    not (DATA / "t10k-labels-idx1-ubyte.gz").exists() and not (DATA / "t10k-labels-idx1-ubyte").exists(),
    reason=f"MNIST not found at {DATA} (set SPADECAM_DATA)",
)


def tiny_recipe():
    r = noisy_mnist_benchmark("paper", quick=True)
    return dataclasses.replace(
        r,
        name="tiny",
        vae=VAEConfig(latent_dim=4, channels=(8, 8, 8, 8)),
        cnn=CNNConfig(channels=(8, 8, 8)),
        vae_train=dataclasses.replace(r.vae_train, epochs=1, progress=False),
        cnn_train=dataclasses.replace(r.cnn_train, epochs=1, progress=False),
        n_train_normal=64,
        n_train_known=64,
        n_test=120,
    )


@pytest.mark.slow
def test_run_writes_results_table_ablations_and_figures(tmp_path, single_thread):
    rows = run_noisy_mnist(known=(3,), seeds=(0,), recipe=tiny_recipe(), data_dir=DATA,
                           out_dir=tmp_path, progress=False, ablations=True, log=lambda *_: None,
                           report=tmp_path / "report" / "r.html")
    assert [r["method"] for r in rows] == list(METHODS)
    page = (tmp_path / "report" / "r.html").read_text()
    spade = next(r["auroc"] for r in rows if r["method"] == "spade")
    assert f"| {spade:.3f} |" in (tmp_path / "table.md").read_text()
    assert f"<td class=num>{spade:.3f}</td>" in page  # the run's table, in the report
    assert "digit 3 (known)" in page and "digit 2 (unknown)" in page  # AUROC by digit
    assert page.count("<div class=card>") >= 8
    assert all(0.0 <= r["auroc"] <= 1.0 for r in rows)
    with open(tmp_path / "results.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames[:4]) == RESULT_COLUMNS
        assert [r["method"] for r in reader] == list(METHODS)
    with open(tmp_path / "ablations.csv") as f:
        methods = [r["method"] for r in csv.DictReader(f)]
    # the last row: SPADE scored in the precision the run did not use
    other = "spade_fp32" if rows[0]["score_precision"] == "bf16" else "spade_bf16"
    assert methods == ["spade", *ABLATIONS, other]
    table = (tmp_path / "table.md").read_text()
    assert "SPADE (paper) | 0.87" in table  # the paper's known-3 figure sits beside ours
    for name in ("samples", "roi_relu_vs_abs", "roi_small_vs_large", "roc_curves", "gallery"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    # no temp files left behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_same_seed_same_numbers(single_thread):
    kw = dict(known=(5,), seeds=(1,), recipe=tiny_recipe(), data_dir=DATA, progress=False,
              figures=False, log=lambda *_: None)
    a = run_noisy_mnist(**kw)
    b = run_noisy_mnist(**kw)
    assert [r["auroc"] for r in a] == [r["auroc"] for r in b]


def test_bad_known_class_is_rejected():
    with pytest.raises(ValueError, match="--known"):
        run_noisy_mnist(known=(0,), data_dir=DATA)


@pytest.mark.slow
def test_figures_with_more_test_images_than_the_gallery_uses(tmp_path, single_thread, monkeypatch):
    # the gallery reads the first 2,000 images; 2,100 is not a multiple of the batch (256)
    from spadecam.bench import reproduce
    from spadecam.bench.protocols import noisy_mnist_data, noisy_mnist_source
    from spadecam.bench.reproduce import _figures_for_model
    from spadecam.bench.runner import run_benchmark

    seen = {}
    real = reproduce.plot_gallery

    def spy(images, maps, scores, digits, path, **kw):
        seen.update(images=len(images), maps=len(maps), scores=len(scores), digits=len(digits))
        return real(images, maps, scores, digits, path, **kw)

    monkeypatch.setattr(reproduce, "plot_gallery", spy)

    r = dataclasses.replace(tiny_recipe(), n_test=2100)
    source = noisy_mnist_source(r, "test", DATA)
    got = []
    run_benchmark(lambda seed: noisy_mnist_data(seed, r, (3,), source), r, [0],
                  progress=False, log=lambda *_: None, on_protocol=got.append)
    _figures_for_model(tmp_path, got[0], source.digits)
    assert (tmp_path / "gallery.png").stat().st_size > 1000
    assert seen == {"images": 2000, "maps": 2000, "scores": 2000, "digits": 2000}


@pytest.mark.slow
def test_a_seeds_rows_do_not_depend_on_what_runs_beside_it(tmp_path, single_thread):
    # the README promises that seed s of a multi-seed run equals seed s run alone; the
    # models of seed 1 must not depend on seed 0's run, on other known classes, on the
    # ablations and figures, nor on the caller's RNG state
    r = tiny_recipe()
    r = dataclasses.replace(r, vae_train=dataclasses.replace(r.vae_train, epochs=2),
                            cnn_train=dataclasses.replace(r.cnn_train, epochs=2))
    kw = dict(recipe=r, data_dir=DATA, progress=False, log=lambda *_: None)

    def seed1_known3(rows):
        return [(x["method"], x["auroc"]) for x in rows if x["seed"] == 1 and x["known_class"] == 3]

    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    alone = run_noisy_mnist(known=(3,), seeds=(1,), figures=False, **kw)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG untouched
    torch.rand(7)  # another caller state
    beside = run_noisy_mnist(known=(1, 3), seeds=(0, 1), ablations=True, out_dir=tmp_path, **kw)
    assert seed1_known3(alone) == seed1_known3(beside)
    assert len(seed1_known3(alone)) == len(METHODS)


def _tiny_with_bank():
    # the spadecam recipe's scoring terms (feature bank, classifier weight) on the tiny models
    return dataclasses.replace(tiny_recipe(),
                               spade_params={"knn_power": 1.0, "classifier_weight": 10.0})


@pytest.mark.slow
def test_figures_and_report_reuse_the_runs_detector(tmp_path, single_thread, monkeypatch):
    # the figures and the report each built the first classifier's feature bank
    # again (a classifier pass over every normal image) and the gallery ran Grad-CAM on the
    # test images again; one bank per classifier is what the scores need
    from spadecam.detectors import SPADE

    built = []
    real = SPADE.build_feature_bank

    def counting(self, x):
        built.append(len(x))
        return real(self, x)

    monkeypatch.setattr(SPADE, "build_feature_bank", counting)
    run_noisy_mnist(known=(3, 5), seeds=(0,), recipe=_tiny_with_bank(), data_dir=DATA,
                    out_dir=tmp_path, progress=False, log=lambda *_: None,
                    report=tmp_path / "r.html")
    assert built == [64, 64]  # known 3 and known 5, the 64 normal training images each
    assert (tmp_path / "gallery.png").stat().st_size > 1000 and (tmp_path / "r.html").exists()


@pytest.mark.slow
def test_spade_maps_of_a_run_are_those_of_a_fresh_detector(single_thread, monkeypatch):
    from spadecam.bench import runner as benchmark
    from spadecam.bench.protocols import noisy_mnist_data, noisy_mnist_source
    from spadecam.bench.runner import detector_params, run_benchmark, spade_map_batches
    from spadecam.detectors import SPADE

    monkeypatch.setattr(benchmark, "SCORE_BATCH", 32)  # 120 test images: 4 batches, the last part
    r = _tiny_with_bank()
    source = noisy_mnist_source(r, "test", DATA)
    got = []
    run_benchmark(lambda seed: noisy_mnist_data(seed, r, (3,), source), r, [0],
                  progress=False, log=lambda *_: None, on_protocol=got.append)
    res, = got
    det = SPADE.from_models(res.vae, res.cnn, res.data.x_normal, **detector_params(r),
                            precision=res.execution.score_precision)
    want = torch.cat(list(spade_map_batches(det, res.data.x_test, res.u_hat)))
    for n in (1, 50, 64, 120):  # inside a batch, across batches, whole batches, all
        maps = res.spade_maps(n)
        assert maps.shape == (n, 84, 84) and maps.dtype == torch.float32
        torch.testing.assert_close(maps, want[:n])
    assert torch.equal(res.spade_maps(10**6), res.spade_maps(len(res.data.x_test)))
    assert len(res.spade_maps(10**6)) == 120
    assert res.spade_maps(0).shape == (0, 84, 84)
    with pytest.raises(ValueError, match="scores no SPADE"):
        dataclasses.replace(res, _cam_source=None).spade_maps(5)


@pytest.mark.slow
@pytest.mark.parametrize("cam", [{}, {"cam_method": "autograd"}])
def test_baselines_read_spades_classifier_pass(single_thread, monkeypatch, cam):
    # the CNN-based baseline ran the classifier over the test images again and Naive
    # SPADE ran Grad-CAM on them again, after SPADE's Grad-CAM forward had both the logits of
    # u and the maps M(u); the scores must be those of the baselines' own passes
    import numpy as np

    from spadecam import scoring
    from spadecam.bench import runner as benchmark
    from spadecam.bench.protocols import noisy_mnist_data, noisy_mnist_source
    from spadecam.bench.runner import detector_params, run_benchmark, spade_scores
    from spadecam.detectors import CNNDetector, NaiveSPADE

    monkeypatch.setattr(benchmark, "SCORE_BATCH", 32)  # 120 test images: 4 batches, the last part
    r = _tiny_with_bank()
    # the closed form and the autograd path (a forward with gradients) of Grad-CAM
    r = dataclasses.replace(r, spade_params={**r.spade_params, **cam})
    source = noisy_mnist_source(r, "test", DATA)
    passes: list[int] = []
    real = scoring.grad_cam_logits_features

    def counting(cnn, x, *args, **kwargs):
        passes.append(len(x))
        return real(cnn, x, *args, **kwargs)

    def no_second_pass(self, X):
        raise AssertionError("the CNN-based baseline ran the classifier again")

    got = []
    with monkeypatch.context() as m:
        m.setattr(scoring, "grad_cam_logits_features", counting)
        m.setattr(CNNDetector, "decision_function", no_second_pass)
        run_benchmark(lambda seed: noisy_mnist_data(seed, r, (3,), source), r, [0],
                      progress=False, log=lambda *_: None, on_protocol=got.append)
    # SPADE's maps of u and u_hat, one batch of 2 x 32 (2 x 24 the last) each: nothing else
    assert passes == [64, 64, 64, 48]
    res, = got
    assert set(res.scores) == {"vae", "cnn", "naive_spade", "spade"}
    p = res.execution.score_precision
    cnn_own = CNNDetector.from_models(res.cnn, precision=p).decision_function(res.data.x_test)
    naive = {k: v for k, v in detector_params(r).items()
             if k in ("cam_layer", "cam_method", "upsample", "error_smoothing", "error_norm")}
    assert naive.get("cam_method") == cam.get("cam_method")
    naive_own = spade_scores(NaiveSPADE.from_models(res.vae, res.cnn, **naive, precision=p),
                             res.data.x_test, res.u_hat)
    assert res.scores["cnn"].shape == (120,) and res.scores["cnn"].dtype == np.float64
    np.testing.assert_allclose(res.scores["cnn"], cnn_own, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.scores["naive_spade"], naive_own, rtol=1e-5, atol=1e-9)
    assert np.ptp(res.scores["cnn"]) > 0 and np.ptp(res.scores["naive_spade"]) > 0


def test_the_pretrained_recipe_puts_the_one_class_row_in_the_noisy_mnist_table(tmp_path):
    """recipe "pretrained" on Noisy-MNIST: the one-class pretrained row ("patchcore", the same
    scores whatever the known digit: no label used), the pretrained CNN-based row and SPADE's
    margin fusion, per known digit, written as the other recipes' results are."""
    from spadecam.bench.pretrained import PRETRAINED_METHODS

    r = dataclasses.replace(noisy_mnist_benchmark("pretrained"), n_train_normal=48, n_train_known=24,
                            n_test=80, spade_params={"patch_bank_size": 400})
    rows = run_noisy_mnist(known=(3, 9), seeds=(0,), recipe=r, data_dir=DATA, out_dir=tmp_path,
                           progress=False, log=lambda *_: None)
    assert [(q["method"], q["known_class"]) for q in rows] == [
        (m, k) for k in (3, 9) for m in PRETRAINED_METHODS]
    for method in ("patchcore", "one_class_pretrained"):  # no label used: per digit the same
        one_class = [q["auroc"] for q in rows if q["method"] == method]
        assert one_class[0] == one_class[1], method
    assert all(0.0 <= q["auroc"] <= 1.0 and q["recipe"] == "pretrained" for q in rows)
    table = (tmp_path / "table.md").read_text()
    assert "Patch kNN, pretrained, no labels" in table and "SPADE (paper) | 0.87" not in table
    with open(tmp_path / "results.csv") as f:
        assert [q["method"] for q in csv.DictReader(f)] == [q["method"] for q in rows]
    with pytest.raises(ValueError, match="ablations"):
        run_noisy_mnist(known=(3,), recipe=r, data_dir=DATA, ablations=True,
                        log=lambda *_: None)


def test_the_pretrained_quick_recipe_cuts_the_data_only():
    q, full = noisy_mnist_benchmark("pretrained", quick=True), noisy_mnist_benchmark("pretrained")
    assert (q.n_train_known, q.n_test, q.pretrained) == (2000, 2000, True)
    assert q.cnn_train == full.cnn_train and q.cnn == full.cnn
