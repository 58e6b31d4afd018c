"""precision="auto": bf16 only where the hardware computes it natively; "32" exact fp32."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from spadecam import SPADE, CNNDetector, NaiveSPADE, VAEDetector
from spadecam.distributed import fabric_settings
from spadecam.io import load_models
from spadecam.precision import (
    bf16_is_fast,
    from_option,
    resolve_scoring_precision,
    resolve_training_precision,
)

GOLDEN = Path(__file__).parent / "data" / "golden_fp32"


@pytest.mark.parametrize(
    ("amx", "avx", "expected"),
    [(False, False, "32"), (True, False, "bf16"), (False, True, "bf16"), (True, True, "bf16")],
)
def test_auto_is_bf16_only_on_cpus_with_native_bf16(cpu_bf16, amx, avx, expected):
    cpu_bf16(amx, avx)
    assert bf16_is_fast("cpu") is (expected == "bf16")
    assert resolve_scoring_precision("auto", "cpu") == expected
    # training: bf16 only with AMX (AVX512-BF16 alone measured slower than fp32 for training)
    assert resolve_training_precision("auto", "cpu") == ("bf16-mixed" if amx else "32-true")
    # explicit values are never changed by the hardware
    assert resolve_scoring_precision("32", "cpu") == "32"
    assert resolve_scoring_precision("bf16", "cpu") == "bf16"
    assert resolve_training_precision("32-true", "cpu") == "32-true"


def test_auto_on_other_devices(monkeypatch, cpu_bf16):
    cpu_bf16(True, True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not bf16_is_fast("cuda")  # no GPU: never bf16 on "cuda"
    assert resolve_training_precision("auto", "auto") == "bf16-mixed"  # auto -> the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert not bf16_is_fast("cuda:0")
    assert resolve_training_precision("auto", "cuda") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_training_precision("auto", "gpu") == "bf16-mixed"
    assert not bf16_is_fast("meta")


def test_fabric_default_precision_is_auto(cpu_bf16):
    cpu_bf16(False, False)
    assert fabric_settings(env={})["precision"] == "32-true"
    cpu_bf16(False, True)  # AVX512-BF16 without AMX: fp32 training
    assert fabric_settings(env={})["precision"] == "32-true"
    cpu_bf16(True, True)
    assert fabric_settings(env={})["precision"] == "bf16-mixed"
    assert fabric_settings(precision="auto", env={})["precision"] == "bf16-mixed"
    assert fabric_settings(precision="32", env={})["precision"] == "32-true"
    # under `fabric run`, auto leaves the precision to fabric run's own --precision
    assert fabric_settings(precision="auto", env={"LT_CLI_USED": "1"})["precision"] is None


def test_from_option_splits_training_and_scoring():
    assert from_option(None) == ("auto", "auto")
    assert from_option("32") == ("32-true", "32")
    assert from_option("bf16") == ("bf16-mixed", "bf16")
    assert from_option("bf16-mixed") == ("bf16-mixed", "bf16")
    with pytest.raises(ValueError, match="--precision must be one of"):
        from_option("fp8")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_scoring_precision("16")


def test_detectors_default_to_auto():
    for cls in (SPADE, NaiveSPADE, VAEDetector, CNNDetector):
        assert cls().precision == "auto"


def _golden_scores(precision: str) -> dict[str, np.ndarray]:
    vae, cnn = load_models(GOLDEN)
    x = np.load(GOLDEN / "scores.npz")["images"]
    kw = dict(error_smoothing=2.0, error_norm="l2", batch_size=16, precision=precision)
    # 0.1 scored without the classifier weight (the spadecam recipe's default is 10;
    # test_default_spade_is_the_golden_score_weighted_by_the_classifier checks it)
    spade = SPADE.from_models(vae, cnn, classifier_weight=0.0, **kw, knn_power=0.0, recipe="spadecam")
    return {
        "spade": spade.decision_function(x),
        "spade_paper": SPADE.from_models(vae, cnn, batch_size=16, precision=precision, recipe="paper")
        .decision_function(x),
        "naive_spade": NaiveSPADE.from_models(vae, cnn, **kw).decision_function(x),
        "vae": VAEDetector.from_models(vae, **kw).decision_function(x),
        "cnn": CNNDetector.from_models(cnn, batch_size=16, precision=precision)
        .decision_function(x),
        "spade_map": spade.anomaly_map(x[:4]),
    }


#: Tolerance of a comparison with the committed fp32 fixture, relative to the largest value of
#: each array. fp32 results are bit-identical on one machine but not across CPUs: oneDNN picks
#: other fp32 kernels (e.g. with AMX), which add the terms of a dot product in another order.
#: Reordering a sum of K fp32 terms changes it by at most about K * u of its magnitude (u =
#: 2**-24, fp32's unit roundoff); the largest reduction in these networks has K = 1024 (the
#: VAE's encoder head, 16 x 8 x 8 features), so K * u = 2**-14. Measured across an AVX512-BF16
#: and an AMX Xeon: at most 3.2e-7 of the maximum (Naive SPADE), 50x below this bound; a real
#: change of the scoring code moves the scores by far more (bf16: about 1e-2).
FP32_ACROSS_CPUS = 2.0**-14


def assert_fp32_close(got: dict[str, np.ndarray], want: Any) -> None:
    for name, value in got.items():
        ref = want[name]
        assert value.dtype == ref.dtype and value.shape == ref.shape, name
        np.testing.assert_allclose(value, ref, rtol=0, atol=FP32_ACROSS_CPUS * np.abs(ref).max(),
                                   err_msg=name)


def test_precision_32_matches_spadecam_0_1_within_fp32_rounding():
    # scores.npz was written by the scoring code of spadecam 0.1 (commit fe5f1b3, fp32 only)
    # on these models and images, on a CPU without AMX; "32" reproduces it up to the order
    # of fp32 additions (on that CPU bit for bit for the unblurred error; the blurred ones
    # within 1.4e-7 of the maximum, since the blur became two matrix products)
    assert_fp32_close(_golden_scores("32"), np.load(GOLDEN / "scores.npz"))


@pytest.mark.slow
def test_precision_32_is_bit_identical_within_one_machine(tmp_path):
    first, second = _golden_scores("32"), _golden_scores("32")
    for name in first:  # the same process, twice
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    # and a fresh process (new allocations, new kernel choices at start-up)
    import subprocess
    import sys

    out = tmp_path / "fresh.npz"
    code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]); "
            "from test_precision import _golden_scores; "
            "np.savez(sys.argv[2], **_golden_scores('32'))")
    subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(out)],
                   check=True, capture_output=True)
    fresh = np.load(out)
    for name in first:
        np.testing.assert_array_equal(fresh[name], first[name], err_msg=name)


def test_default_spade_is_the_golden_score_weighted_by_the_classifier():
    # the spadecam recipe's score: e' (1 + 10 p), p the classifier's probability of the
    # known anomaly; each image's e' is 0.1's (golden), so its score is golden * (1 + 10 p)
    from spadecam.models.cnn import NORMAL_CLASS

    vae, cnn = load_models(GOLDEN)
    golden = np.load(GOLDEN / "scores.npz")
    x = golden["images"]
    got = SPADE.from_models(vae, cnn, error_smoothing=2.0, error_norm="l2", batch_size=16,
                            precision="32", knn_power=0.0, recipe="spadecam").decision_function(x)
    with torch.no_grad():
        u = torch.from_numpy(x).float().div(255)
        u = u[:, None] if u.ndim == 3 else u
        p = cnn.eval()(u).softmax(1)[:, 1 - NORMAL_CLASS].double().numpy()
    np.testing.assert_allclose(got, golden["spade"] * (1 + 10 * p), rtol=1e-5)


def test_auto_is_exact_fp32_where_bf16_is_not_native(cpu_bf16):
    exact = _golden_scores("32")
    cpu_bf16(False, False)
    got = _golden_scores("auto")
    for name in got:  # the very fp32 path on this machine: equal bits
        np.testing.assert_array_equal(got[name], exact[name], err_msg=name)
    assert_fp32_close(got, np.load(GOLDEN / "scores.npz"))


@pytest.mark.parametrize("report", [(False, True), (True, True), (True, False)],
                         ids=["avx512_bf16", "amx", "amx_only"])
def test_auto_uses_bf16_where_native(cpu_bf16, report):
    cpu_bf16(*report)
    golden = np.load(GOLDEN / "scores.npz")
    got = _golden_scores("auto")
    # bf16 autocast changes the numbers (it is really used) but not much
    assert not np.array_equal(got["spade"], golden["spade"])
    np.testing.assert_allclose(got["spade"], golden["spade"], rtol=0.1)
    np.testing.assert_allclose(got["cnn"], golden["cnn"], atol=0.05)
    # and bf16 is as deterministic on one machine as fp32
    again = _golden_scores("auto")
    for name in got:
        np.testing.assert_array_equal(again[name], got[name], err_msg=name)


def test_fit_with_auto_under_each_cpu_report(cpu_kind, single_thread):
    """The defaults on every kind of CPU: the precisions auto resolves to, what the model
    directory records, same-seed determinism and a detector that still separates the obvious
    anomaly (a bright square), whichever precision trained and scored it."""
    from spadecam.models import CNNConfig, VAEConfig
    from spadecam.training import TrainConfig

    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(10, 5, (40, 16, 16)), 0, 255).astype(np.uint8)
    x[32:, 4:10, 4:10] = 230
    y = np.r_[np.zeros(32), np.ones(8)].astype(np.int64)
    test = x[::4].copy()  # 8 normal, 2 squares
    kw = dict(vae_config=VAEConfig(image_size=16, latent_dim=4, channels=(8, 8)),
              cnn_config=CNNConfig(channels=(8, 8), kernel_sizes=(3, 3), strides=(2, 2)),
              vae_train=TrainConfig(epochs=8, batch_size=8, lr=3e-3, progress=False),
              cnn_train=TrainConfig(epochs=8, batch_size=8, lr=3e-3, progress=False),
              # every image trains (the default holds 0.1 out for the threshold):
              # this test is about precision, on 40 images
              threshold_holdout=0.0)
    det = SPADE(**kw, recipe="spadecam").fit(x, y)
    bf16 = cpu_kind != "no_bf16"
    assert resolve_scoring_precision(det.precision) == ("bf16" if bf16 else "32")
    assert resolve_training_precision("auto", "cpu") == (
        "bf16-mixed" if cpu_kind == "amx" else "32-true")
    s = det.decision_function(test)
    assert np.isfinite(s).all() and s[-2:].min() > s[:-2].max()
    again = SPADE(**kw, recipe="spadecam").fit(x, y)
    np.testing.assert_array_equal(again.decision_function(test), s)
    assert again.threshold_ == det.threshold_


def _imports_torch(code: str, module: str = "torch") -> bool:
    import subprocess
    import sys

    probe = f"import sys\n{code}\nprint({module!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["train", "--help"], ["train"], ["reproduce", "noisy-mnist", "--known", "0"],
     ["score", "m", "x.png", "--precision", "fp8"]],
)
def test_cli_help_and_argument_errors_do_not_import_torch(argv):
    code = ("from spadecam.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass")
    assert not _imports_torch(code)
    # nor numpy (train's defaults read from spadecam.recipes pulled spadecam.data,
    # numpy and urllib in: --help went from 0.10 to 0.29 s)
    assert not _imports_torch(code, "numpy")


@pytest.mark.slow
def test_package_imports_torch_only_when_a_detector_is_used():
    assert not _imports_torch("import spadecam; spadecam.__version__")
    assert _imports_torch("import spadecam; spadecam.SPADE")


def test_bf16_decoder_crop_equals_output_padding():
    from spadecam.models.vae import _upsample

    torch.manual_seed(0)
    layer = torch.nn.ConvTranspose2d(6, 5, 4, stride=2, padding=1)
    h = torch.randn(3, 6, 10, 10)
    with torch.no_grad():
        # fp32: exactly the output_size path (bit-identical to 0.1)
        assert torch.equal(_upsample(layer, h, 21), layer(h, output_size=(21, 21)))
        with torch.autocast("cpu", torch.bfloat16):
            got = _upsample(layer, h, 21)
            want = layer(h, output_size=(21, 21))
            even = _upsample(layer, h, 20)  # no output padding: the plain layer
            assert torch.equal(even, layer(h))
    assert got.shape == want.shape == (3, 5, 21, 21)
    torch.testing.assert_close(got.float(), want.float(), atol=0.03, rtol=0.02)
    # and in real arithmetic (float64) the crop is the padded transposed convolution
    l64 = layer.double()
    with torch.no_grad():
        full = torch.nn.functional.conv_transpose2d(h.double(), l64.weight, l64.bias, stride=2)
        torch.testing.assert_close(full[..., 1:22, 1:22], l64(h.double(), output_size=(21, 21)))


# ------------------------------------------------ training precision chosen by measurement


def _fake_steps(monkeypatch, fp32_s: float, bf16_s: float, calls: list | None = None):
    """Make the measurement see steps of fp32_s / bf16_s seconds (no training runs)."""
    from spadecam import precision

    def fake(model, loss_fn, batch, bf16):
        if calls is not None:
            calls.append(bf16)
        return lambda: bf16_s if bf16 else fp32_s

    monkeypatch.setattr(precision, "_step_seconds", fake)


@pytest.mark.parametrize(("fp32_s", "bf16_s", "expected"), [
    (1.0, 0.5, "bf16-mixed"),   # 2x faster
    (1.0, 0.9, "bf16-mixed"),   # 1.11x: just above the 1.1 margin
    (1.0, 0.95, "32-true"),     # 1.05x: a tie on a noisy machine keeps exact fp32
    (0.5, 1.0, "32-true"),      # emulated bf16, slower
])
def test_measured_training_precision_takes_the_faster_by_the_margin(monkeypatch, fp32_s,
                                                                    bf16_s, expected):
    from spadecam.precision import BF16_TRAINING_MARGIN, measure_training_precision

    assert BF16_TRAINING_MARGIN == 1.1
    _fake_steps(monkeypatch, fp32_s, bf16_s)
    m = measure_training_precision(torch.nn.Linear(2, 1), lambda m, b: m(b[0]).sum(),
                                   (torch.zeros(4, 2),), use_cache=False)
    assert m.precision == expected
    assert (m.fp32_seconds, m.bf16_seconds) == (fp32_s, bf16_s)
    assert m.speedup == pytest.approx(fp32_s / bf16_s)
    assert not m.cached
    with pytest.raises(ValueError, match="steps must be >= 1"):
        measure_training_precision(torch.nn.Linear(2, 1), lambda m, b: m(b[0]).sum(),
                                   (torch.zeros(4, 2),), steps=0)


def _vae_problem(size: int = 16, width: int = 8, n: int = 8):
    from spadecam.models import VAEConfig
    from spadecam.models.vae import ConvVAE, negative_elbo

    cfg = VAEConfig(image_size=size, latent_dim=4, channels=(width, width)).sized(1, size)
    torch.manual_seed(0)
    model = ConvVAE(cfg)

    def loss_fn(m, batch):
        u = batch[0].float().div(255).contiguous(memory_format=torch.channels_last)
        logits, mu, logvar = m(u, sample=True)
        return negative_elbo(logits.float(), u, mu.float(), logvar.float(), cfg.likelihood,
                             cfg.gaussian_var, cfg.beta)

    batch = (torch.randint(0, 255, (n, 1, size, size), dtype=torch.uint8),)
    return model, loss_fn, batch


def test_measured_training_precision_really_times_both(single_thread):
    """On this machine, for real: the choice follows the measured seconds, the model and the
    caller's RNG are left as they were."""
    from spadecam.precision import BF16_TRAINING_MARGIN, measure_training_precision

    # large enough that convolutions, not Python, take the time (a 16-px VAE's step is 4 ms
    # in either precision)
    model, loss_fn, batch = _vae_problem(64, 32, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    m = measure_training_precision(model, loss_fn, batch, steps=2, use_cache=False)
    assert m.fp32_seconds > 0 and m.bf16_seconds > 0
    assert m.precision == ("bf16-mixed" if m.speedup >= BF16_TRAINING_MARGIN else "32-true")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(torch.random.get_rng_state(), rng)
    if not bf16_is_fast("cpu"):  # emulated bf16 (measured 0.08x fp32 on an AVX2 EPYC)
        assert m.precision == "32-true"


def test_measured_training_precision_is_kept_per_machine(monkeypatch, tmp_path, cpu_bf16):
    """A machine decides once: the choice is written to the cache folder and read back by a
    later process (same CPU, torch, threads, model and batch), so the same seed trains in the
    same precision; a different batch shape measures again; a broken file is ignored."""
    from spadecam import precision

    cpu_bf16(False, True)
    monkeypatch.setenv("SPADECAM_CACHE_DIR", str(tmp_path / "cache"))
    model, loss_fn, batch = _vae_problem()
    calls: list = []
    _fake_steps(monkeypatch, 1.0, 0.4, calls)
    first = precision.measure_training_precision(model, loss_fn, batch)
    assert first.precision == "bf16-mixed" and not first.cached and calls
    saved = json.loads((tmp_path / "cache" / "training_precision.json").read_text())
    assert [v["precision"] for v in saved.values()] == ["bf16-mixed"]
    precision._MEASURED.clear()  # as a new process
    calls.clear()
    _fake_steps(monkeypatch, 0.4, 1.0, calls)  # the machine would now measure otherwise
    again = precision.measure_training_precision(model, loss_fn, batch)
    assert again.cached and again.precision == "bf16-mixed" and not calls
    assert (again.fp32_seconds, again.bf16_seconds) == (1.0, 0.4)
    other = precision.measure_training_precision(model, loss_fn, (batch[0][:4],))
    assert other.precision == "32-true" and calls
    (tmp_path / "cache" / "training_precision.json").write_text("{not json")
    precision._MEASURED.clear()
    assert precision.measure_training_precision(model, loss_fn, batch).precision == "32-true"


def test_fit_measures_auto_only_where_it_should(monkeypatch, cpu_bf16, single_thread):
    """train_vae with precision "auto": measured on a CPU with native bf16 when the training
    has >= MEASURE_MIN_STEPS steps (the model's log says the precision that trained); the
    rule for shorter ones, for explicit precisions and where bf16 is not native."""
    from spadecam import precision
    from spadecam.distributed import measures_auto_precision, training_precision_label
    from spadecam.models import VAEConfig
    from spadecam.training import TrainConfig, train_vae, trained_precision

    calls: list = []
    _fake_steps(monkeypatch, 1.0, 0.25, calls)
    x = torch.randint(0, 255, (16, 1, 16, 16), dtype=torch.uint8)
    cfg = VAEConfig(image_size=16, latent_dim=4, channels=(8, 8))

    def fit(steps: int, prec: str = "auto") -> str:
        precision._MEASURED.clear()
        tc = TrainConfig(steps=steps, batch_size=8, val_fraction=0.0, progress=False,
                         precision=prec)
        return train_vae(x, cfg, tc).training_log_["precision"]

    cpu_bf16(False, True)  # AVX512-BF16 without AMX: rule fp32, measurement bf16 (faked)
    assert measures_auto_precision(env={})
    assert training_precision_label(env={}) == (
        f"auto (measured per model; 32-true below {precision.MEASURE_MIN_STEPS} steps)")
    assert fit(precision.MEASURE_MIN_STEPS) == "bf16-mixed" and calls
    calls.clear()
    assert fit(precision.MEASURE_MIN_STEPS - 1) == "32-true" and not calls  # the rule
    assert fit(precision.MEASURE_MIN_STEPS, "32-true") == "32-true" and not calls
    cpu_bf16(True, True)  # AMX: the rule is bf16-mixed; measured fp32 wins (faked)
    _fake_steps(monkeypatch, 0.25, 1.0, calls)
    assert fit(precision.MEASURE_MIN_STEPS) == "32-true" and calls
    cpu_bf16(False, False)  # no native bf16: never measured
    calls.clear()
    assert not measures_auto_precision(env={})
    assert training_precision_label(env={}) == "32-true"
    assert fit(precision.MEASURE_MIN_STEPS) == "32-true" and not calls
    cpu_bf16(False, True)  # several processes or fabric run: the rule, no timing
    assert not measures_auto_precision(devices=2, env={})
    assert not measures_auto_precision(env={"LT_CLI_USED": "1"})
    assert not measures_auto_precision(precision="bf16-mixed", env={})

    class Log(torch.nn.Module):
        def __init__(self, p):
            super().__init__()
            self.training_log_ = {"precision": p}

    from spadecam.models.vae import ConvVAE

    vae = ConvVAE(cfg.sized(1, 16))
    vae.training_log_ = {"precision": "bf16-mixed"}
    assert trained_precision(vae, Log("bf16-mixed")) == "bf16-mixed"
    assert trained_precision(vae, Log("32-true")) == "VAE bf16-mixed, classifier 32-true"
    assert trained_precision(torch.nn.Linear(1, 1)) is None
