"""The whole detector as one ONNX graph, run without torch.

Parity: on Noisy-MNIST-like images (a digit-like stroke at a random place in noise, square)
and ELPV-like ones (grey cell textures with a crack; non-square and of mixed sizes, so the
letterbox mask matters), for SPADE and the three baselines, the exported graph on
onnxruntime and the torch detector in fp32 give scores within 1e-4 relative, maps within
1e-4 absolute, and the same decisions. Tiny models, trained once per module.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spadecam import SPADE, CNNDetector, NaiveSPADE, VAEDetector
from spadecam.deploy import OnnxSPADE, export_onnx
from spadecam.deploy.onnx_export import ExportError
from spadecam.exceptions import ModelFormatError
from spadecam.training import TrainConfig

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("single_thread")

TRAIN = TrainConfig(epochs=3, batch_size=8, lr=3e-3, progress=False, seed=0)


def _mnist_like(rng: np.random.Generator, n: int, size: int, digit: bool) -> np.ndarray:
    """Noise with per-image sigma; anomalies (``digit``) carry a bright stroke."""
    x = rng.normal(30, rng.uniform(5, 20, (n, 1, 1)), (n, size, size))
    for i in range(n):
        r, c = rng.integers(2, size - 12, 2)
        if digit:
            x[i, r : r + 10, c + 4 : c + 6] = 230  # a "1"
        else:
            x[i, r : r + 10, c : c + 8] = 120  # a dim blob: the normal class
    return np.clip(x, 0, 255).astype(np.uint8)


def _cell_like(rng: np.random.Generator, h: int, w: int, crack: bool) -> np.ndarray:
    """A grey cell texture (bus bars and grain) with a dark crack for anomalies; float [0, 1]."""
    x = 0.5 + 0.05 * rng.standard_normal((h, w))
    x[:, :: max(2, w // 4)] = 0.2  # bus bars
    if crack:
        r = int(rng.integers(0, h - 1))
        x[r : r + 2, :] = 0.05
    return np.clip(x, 0, 1).astype(np.float32)


def _four(det: SPADE, X_threshold) -> dict:
    """SPADE and the baselines around one trained VAE and classifier, thresholds set."""
    same = dict(precision="32", image_size=det.image_size_, resize=det.resize)
    dets = {
        "SPADE": det,
        "NaiveSPADE": NaiveSPADE.from_models(det.vae_, det.cnn_, **same),
        "VAEDetector": VAEDetector.from_models(det.vae_, **same),
        "CNNDetector": CNNDetector.from_models(det.cnn_, **same),
    }
    for d in dets.values():
        if d is not det:
            s = np.sort(d.decision_function(X_threshold))  # halfway between two scores:
            d.threshold_ = float(s[len(s) // 2 - 1 : len(s) // 2 + 1].mean())  # no ties
    return dets


@pytest.fixture(scope="module")
def mnist_like():
    rng = np.random.default_rng(0)
    x = np.concatenate([_mnist_like(rng, 24, 24, False), _mnist_like(rng, 8, 24, True)])
    y = np.r_[np.zeros(24), np.ones(8)]
    det = SPADE(vae_train=TRAIN, cnn_train=TRAIN, precision="32", batch_size=16, recipe="spadecam").fit(x, y)
    test = np.concatenate([_mnist_like(rng, 6, 24, False), _mnist_like(rng, 6, 24, True)])
    return _four(det, test), test


@pytest.fixture(scope="module")
def cell_like():
    rng = np.random.default_rng(1)
    sizes = [(30, 40), (40, 30), (36, 36), (24, 48)]
    x = [_cell_like(rng, *sizes[i % 4], crack=i >= 20) for i in range(28)]
    y = np.r_[np.zeros(20), np.ones(8)]
    det = SPADE(image_size=24, vae_train=TRAIN, cnn_train=TRAIN, precision="32",
                batch_size=16, recipe="spadecam").fit(x, y)
    test = [_cell_like(rng, *sizes[i % 4], crack=i % 2 == 1) for i in range(10)]
    test.append(_cell_like(rng, 24, 24, True))  # one at the model's size among letterboxed ones
    return _four(det, test), test


@pytest.mark.parametrize("data", ["mnist_like", "cell_like"])
@pytest.mark.parametrize("name", ["SPADE", "NaiveSPADE", "VAEDetector", "CNNDetector"])
def test_onnx_graph_scores_as_torch_fp32(request, tmp_path, data, name):
    dets, test = request.getfixturevalue(data)
    det = dets[name]
    path = export_onnx(det, tmp_path / f"{name}.onnx")
    onnx = OnnxSPADE(path, batch_size=4)  # batches of another size than torch's
    s_t, m_t = det.decision_function_and_map(test)
    s_o, m_o = onnx.decision_function_and_map(test)
    np.testing.assert_allclose(s_o, s_t, rtol=1e-4, atol=1e-4 * np.abs(s_t).max())
    np.testing.assert_array_equal(onnx.predict(test), det.predict(test))
    assert (m_o is None) == (m_t is None) == (name == "CNNDetector")
    if m_t is not None:
        assert len(m_o) == len(m_t)
        for a, b in zip(m_o, m_t):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    assert onnx.detector == name and onnx.threshold_ == det.threshold_
    assert (onnx.image_size, onnx.channels, onnx.resize) == (
        det.image_size_, det.in_channels_, det.resize)


def test_the_score_actually_depends_on_the_letterbox_mask(cell_like, tmp_path):
    """valid is a real input of the graph: all-ones gives other scores on letterboxed images."""
    dets, test = cell_like
    path = export_onnx(dets["SPADE"], tmp_path / "m.onnx")
    onnx = OnnxSPADE(path)
    from spadecam.preprocess import check_images, to_model_input

    mi = to_model_input(check_images(test[:4]), onnx.image_size, onnx.resize)
    assert mi.valid is not None
    masked = onnx.session.run(["score"], {"images": mi.u, "valid": mi.valid})[0]
    ones = onnx.session.run(["score"], {"images": mi.u, "valid": np.ones_like(mi.valid)})[0]
    assert not np.allclose(masked, ones, rtol=1e-3)
    np.testing.assert_allclose(masked, onnx.decision_function(test[:4]), rtol=1e-6)


def test_numpy_letterbox_by_hand():
    """The torch-free letterbox (what the ONNX runner feeds the graph), values by hand: a
    2 x 4 uint8 image into a 4-px input keeps its size (scale 1), lands in rows 1-2, /255;
    a channels-last RGB image 5 x 2 becomes 4 x 2 (round(1.6)) in columns 1-2; a 4 x 4 one
    is not resized."""
    from spadecam.preprocess import check_images, to_model_input

    grey = np.array([[0, 51, 102, 255], [255, 204, 153, 0]], np.uint8)
    rgb = np.zeros((5, 2, 3), np.uint8)
    rgb[..., 1] = 255  # green
    with pytest.raises(ValueError, match=r"X: images have different channel counts \[1, 3\]"):
        check_images([grey, rgb], "X")
    imgs = check_images([grey], "X") + check_images([rgb], "X")
    assert [a.shape for a in imgs] == [(1, 2, 4), (3, 5, 2)]
    mi = to_model_input([imgs[0]], 4, "letterbox")
    want = np.zeros((1, 1, 4, 4), np.float32)
    want[0, 0, 1:3] = np.float32([[0, 51, 102, 255], [255, 204, 153, 0]]) / np.float32(255)
    np.testing.assert_array_equal(mi.u, want)
    np.testing.assert_array_equal(mi.valid[0, 0], [[0] * 4, [1] * 4, [1] * 4, [0] * 4])
    assert mi.boxes == [(1, 0, 2, 4)] and mi.sizes == [(2, 4)]
    mi = to_model_input([imgs[1]], 4, "letterbox")
    assert mi.boxes == [(0, 1, 4, 2)] and mi.sizes == [(5, 2)]
    np.testing.assert_allclose(mi.u[0, 1, :, 1:3], 1.0, atol=1e-6)  # green stays green
    assert mi.u[0, 0].max() == 0 and mi.u[0, 1, :, [0, 3]].max() == 0  # red 0; padding 0
    mi = to_model_input([np.full((1, 4, 4), 0.25, np.float32)], 4, "letterbox")
    assert mi.valid is None and mi.boxes is None and (mi.u == 0.25).all()


@pytest.mark.parametrize("name", ["SPADE", "NaiveSPADE", "VAEDetector", "CNNDetector"])
def test_metadata_says_how_to_use_the_graph(mnist_like, tmp_path, name):
    import json

    import onnx

    import spadecam

    dets, _ = mnist_like
    path = export_onnx(dets[name], tmp_path / "m.onnx", overlay_scale=0.5)
    model = onnx.load(str(path))
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}  # all JSON
    outputs = ["score"] if name == "CNNDetector" else ["score", "anomaly_map"]
    assert meta["spadecam_version"] == spadecam.__version__ and meta["detector"] == name
    assert meta["threshold"] == dets[name].threshold_
    assert (meta["image_size"], meta["channels"], meta["resize"]) == (24, 1, "letterbox")
    assert meta["outputs"] == outputs and meta["overlay_scale"] == 0.5
    # the networks' minimum side (the VAE's four stride-2 convolutions, the CNN's stride 8)
    assert meta["min_input_size"] == (8 if name == "CNNDetector" else 16)
    # the default score's feature bank is in SPADE's graph, not in the baselines'
    assert (meta["knn_bank_shape"] is not None) == (name == "SPADE")
    assert [o.name for o in model.graph.output] == outputs
    assert [i.name for i in model.graph.input] == ["images", "valid"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 24, 24]
    assert model.opset_import[0].version == 20


def test_export_refuses_a_grad_cam_without_closed_form(mnist_like, tmp_path):
    dets, _ = mnist_like
    det = SPADE.from_models(dets["SPADE"].vae_, dets["SPADE"].cnn_, cam_method="autograd",
                            knn_power=0, recipe="spadecam")
    det.threshold_ = 1.0
    with pytest.raises(ExportError, match="no closed form.*autograd"):
        export_onnx(det, tmp_path / "m.onnx")
    det = SPADE.from_models(dets["SPADE"].vae_, dets["SPADE"].cnn_, cam_layer=-2, knn_power=0,
        recipe="spadecam")
    det.threshold_ = 1.0
    with pytest.raises(ExportError, match="cam_layer=-2"):
        export_onnx(det, tmp_path / "m.onnx")
    det = SPADE.from_models(dets["SPADE"].vae_, dets["SPADE"].cnn_, knn_power=0, recipe="spadecam")
    with pytest.raises(ExportError, match="threshold_"):
        export_onnx(det, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_runner_refuses_bad_files_and_images(mnist_like, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        OnnxSPADE(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelFormatError, match="bad.onnx"):
        OnnxSPADE(tmp_path / "bad.onnx")
    dets, test = mnist_like
    onnx = OnnxSPADE(export_onnx(dets["VAEDetector"], tmp_path / "v.onnx"))
    with pytest.raises(ValueError, match="3 channel"):
        onnx.decision_function(np.zeros((2, 3, 24, 24), np.uint8))
    with pytest.raises(ValueError, match=r"range \[2, 2\]"):
        onnx.decision_function(np.full((2, 24, 24), 2.0))
    with pytest.raises(ValueError, match="no per-pixel map"):
        OnnxSPADE(export_onnx(dets["CNNDetector"], tmp_path / "c.onnx")).anomaly_map(test)


# --------------------------------------------------------------------------- CLI


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize("detector", ["spade", "naive-spade", "vae", "cnn"])
def test_cli_export_and_score_onnx_reproduce_the_torch_csv(tiny_model, tmp_path, detector):
    """`spadecam export` + `spadecam score --onnx` give the torch CSV (scores to 1e-4, same
    labels, the same overlay names), in a process that never imports torch."""
    from spadecam import workflow
    from spadecam.cli import main

    model, folders = tiny_model
    if detector != "spade":
        model = workflow.train(folders["train/good"], folders["train/defect"],
                               tmp_path / detector, image_size=16, latent_dim=None,
                               batch_size=8, epochs=2, progress=False, detector=detector, recipe="spadecam")
    inputs = [str(folders["test/good"]), str(folders["test/defect"])]
    maps = [] if detector == "cnn" else ["--maps", str(tmp_path / "ov_torch")]
    assert main(["score", str(model), *inputs, "--precision", "32",
                 "--out", str(tmp_path / "torch.csv"), "--no-progress", *maps]) == 0
    assert main(["export", str(model), "--out", str(tmp_path / "m.onnx")]) == 0
    maps = [] if detector == "cnn" else ["--maps", str(tmp_path / "ov_onnx")]
    code = ("import sys; from spadecam.cli import main; "
            f"rc = main(['score', '--onnx', {str(tmp_path / 'm.onnx')!r}, "
            f"*{inputs!r}, '--out', {str(tmp_path / 'onnx.csv')!r}, "
            f"*{maps!r}]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    t, o = _rows(tmp_path / "torch.csv"), _rows(tmp_path / "onnx.csv")
    assert [r["path"] for r in t] == [r["path"] for r in o]
    assert [r["label"] for r in t] == [r["label"] for r in o]
    st, so = (np.array([float(r["score"]) for r in rows]) for rows in (t, o))
    np.testing.assert_allclose(so, st, rtol=1e-4, atol=1e-4 * np.abs(st).max())
    assert [Path(r["map"]).relative_to(tmp_path / "ov_onnx") for r in o if r["map"]] == [
        Path(r["map"]).relative_to(tmp_path / "ov_torch") for r in t if r["map"]]
    assert (detector == "cnn") == (o[0]["map"] == "")
    from PIL import Image

    for rt, ro in zip(t, o):  # the same overlays, up to a rounding step of the colour
        if ro["map"]:
            a, b = (np.asarray(Image.open(r["map"])).astype(int) for r in (rt, ro))
            assert a.shape == b.shape and np.abs(a - b).max() <= 1


def test_cli_score_onnx_refuses_torch_options_and_cnn_maps(tiny_model, tmp_path, capsys):
    from spadecam.cli import main

    model, folders = tiny_model
    with pytest.raises(SystemExit):
        main(["score", "--onnx", "m.onnx", str(folders["test/good"]), "--precision", "32"])
    assert "does not take --precision" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["score", str(model)])
    assert "MODEL_DIR and at least one INPUT" in capsys.readouterr().err
    assert main(["score", "--onnx", str(tmp_path / "none.onnx"), str(folders["test/good"])]) == 2
    assert "no such file" in capsys.readouterr().err


def test_train_refuses_spade_options_for_a_baseline(tiny_model, tmp_path, capsys):
    from spadecam.cli import main

    _, folders = tiny_model
    rc = main(["train", "--normal", str(folders["train/good"]), "--anomaly",
               str(folders["train/defect"]), "--out", str(tmp_path / "m"), "--detector", "vae",
               "--classifier-weight", "3"])
    assert rc == 2 and "--detector vae does not take --classifier-weight" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_cnn_model_refuses_maps_before_any_work(tiny_model, tmp_path):
    from spadecam import workflow

    _, folders = tiny_model
    model = workflow.train(folders["train/good"], folders["train/defect"], tmp_path / "cnn",
                           image_size=16, batch_size=8, epochs=1, progress=False,
                           detector="cnn", recipe="spadecam")
    with pytest.raises(ValueError, match="--maps: this model gives no per-pixel map"):
        workflow.score(model, [folders["test/good"], folders["test/defect"]],
                       maps=tmp_path / "ov", progress=False)
    assert not (tmp_path / "ov").exists()


def test_score_onnx_in_chunks_gives_the_one_chunk_rows(tiny_model, tmp_path, monkeypatch):
    """score --onnx reads and scores SCORE_CHUNK files at a time (flat memory): chunks of 2
    give the rows and overlays of one chunk."""
    from spadecam.deploy import outputs
    from spadecam.deploy.onnx_inferencer import score_onnx

    model, folders = tiny_model
    path = export_onnx(model, tmp_path / "m.onnx")
    inputs = [folders["test/good"], folders["test/defect"]]
    whole = score_onnx(path, inputs, tmp_path / "a.csv", tmp_path / "ov_a")
    monkeypatch.setattr(outputs, "SCORE_CHUNK", 2)
    chunked = score_onnx(path, inputs, tmp_path / "b.csv", tmp_path / "ov_b")
    assert [r["label"] for r in chunked] == [r["label"] for r in whole]
    np.testing.assert_allclose([r["score"] for r in chunked], [r["score"] for r in whole],
                               rtol=1e-5)
    assert len(list((tmp_path / "ov_b").rglob("*.png"))) == len(whole)
    assert not [p for p in (tmp_path / "ov_b").iterdir() if p.name.startswith(".")]  # staged


def test_overlay_is_matplotlibs_inferno_blend():
    """The overlay colours are matplotlib's "inferno" at v = clip(map / scale, 0, 1), blended
    at opacity 0.6 v over the image (written here in float64 from matplotlib's colormap);
    the fast path (cached table, float32 blend) is within one colour step of it."""
    from matplotlib import colormaps

    from spadecam.deploy.outputs import overlay

    rng = np.random.default_rng(0)
    for channels in (1, 3):
        image = rng.random((channels, 40, 48))
        error_map = rng.random((40, 48)) * 2
        error_map[0, :4] = [0.0, 1.5, 3.0, 1.5 * 255 / 256]  # 0, full colour, clipped, an edge
        v = np.clip(error_map / 1.5, 0, 1)
        base = np.moveaxis(np.repeat(image, 3 // channels, axis=0), 0, -1)
        alpha = 0.6 * v[..., None]
        want = np.round(255 * ((1 - alpha) * base + alpha * colormaps["inferno"](v)[..., :3]))
        got = overlay(image, error_map, 1.5)
        assert got.shape == (40, 48, 3) and got.dtype == np.uint8
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    # a zero map leaves the image as it was (to the nearest 8-bit step)
    grey = rng.random((1, 8, 8))
    np.testing.assert_array_equal(overlay(grey, np.zeros((8, 8)), 1.0),
                                  np.repeat(np.round(255 * grey[0])[..., None], 3, axis=-1))


def test_an_export_leaves_no_traced_tensor_behind_and_scoring_after_it_is_unchanged(
        mnist_like, tmp_path):
    """torch.export traces the blur's cached matrix: the cache must not keep the traced
    tensor (it broke every later decision_function in the process with that image side)."""
    import torch

    from spadecam import error

    dets, test = mnist_like
    before = {name: d.decision_function(test) for name, d in dets.items()}
    error._cached_blur_matrix.cache_clear()  # the export is the first to ask for the matrix
    for name, det in dets.items():
        export_onnx(det, tmp_path / f"{name}.onnx")
        np.testing.assert_array_equal(det.decision_function(test), before[name])
        np.testing.assert_array_equal(det.predict(test), before[name] > det.threshold_)
    assert error._cached_blur_matrix.cache_info().currsize > 0  # scoring filled it again
    n, sigma = 24, float(dets["SPADE"]._param("error_smoothing"))
    m = error.blur_matrix(n, sigma, torch.float32, torch.device("cpu"))
    assert type(m) is torch.Tensor and not m.is_inference() and not m.requires_grad
