"""precision="auto": bf16 only where the hardware computes it natively; "32" exact fp32."""

from __future__ import annotations

from pathlib import Path

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


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set what torch reports about the CPU's bf16 support: cpu_bf16(amx, avx512_bf16)."""

    def set_flags(amx: bool, avx512_bf16: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)

    return set_flags


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
    spade = SPADE.from_models(vae, cnn, **kw)
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


def test_precision_32_is_bit_identical_to_spadecam_0_1():
    # scores.npz was written by the scoring code of spadecam 0.1 (commit fe5f1b3, fp32 only)
    # on these models and images; "32" must reproduce every value exactly
    golden = np.load(GOLDEN / "scores.npz")
    for name, got in _golden_scores("32").items():
        assert got.dtype == golden[name].dtype, name
        np.testing.assert_array_equal(got, golden[name], err_msg=name)


def test_auto_is_exact_fp32_where_bf16_is_not_native(cpu_bf16):
    cpu_bf16(False, False)
    golden = np.load(GOLDEN / "scores.npz")
    for name, got in _golden_scores("auto").items():
        np.testing.assert_array_equal(got, golden[name], err_msg=name)


def test_auto_uses_bf16_where_native(cpu_bf16):
    cpu_bf16(False, True)
    golden = np.load(GOLDEN / "scores.npz")
    got = _golden_scores("auto")
    # bf16 autocast changes the numbers (it is really used) but not much
    assert not np.array_equal(got["spade"], golden["spade"])
    np.testing.assert_allclose(got["spade"], golden["spade"], rtol=0.1)
    np.testing.assert_allclose(got["cnn"], golden["cnn"], atol=0.05)


def _imports_torch(code: str) -> bool:
    import subprocess
    import sys

    probe = f"import sys\n{code}\nprint('torch' in sys.modules)"
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
