"""Damaged or contradictory model files are refused with an error naming the file, before any
scoring: the feature bank of a model directory, an exported ONNX graph (its bytes, its metadata
against its graph, another tool's graph), and nothing spadecam writes is refused by its own
reader (an infinite threshold)."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from spadecam.cli import main
from spadecam.detectors import load_detector
from spadecam.exceptions import ModelFormatError

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def model(tiny_model, tmp_path) -> Path:
    """A private copy of the session's tiny SPADE model directory (with a feature bank)."""
    return Path(shutil.copytree(tiny_model[0], tmp_path / "model"))


def _rehash(model: Path, name: str) -> None:
    """config.json's sha256 of ``name`` updated, as an editor who knows the format would."""
    config = json.loads((model / "config.json").read_text())
    config["weights_sha256"][name] = hashlib.sha256((model / name).read_bytes()).hexdigest()
    (model / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("edit", ["wider", "rows", "nan", "keys"])
def test_a_damaged_feature_bank_is_refused_naming_the_file(model, tiny_model, tmp_path, capsys,
                                                           edit):
    """A knn.safetensors of the wrong width loaded and then died in scoring with torch's
    'X1 and X2 must have the same number of columns'."""
    bank = load_file(model / "knn.safetensors")["features"]
    m, k = bank.shape
    new = {"wider": {"features": torch.zeros(m, k + 3)},
           "rows": {"features": torch.zeros(1, k)},
           "nan": {"features": torch.full((m, k), float("nan"))},
           "keys": {"bank": bank}}[edit]
    save_file(new, model / "knn.safetensors")
    _rehash(model, "knn.safetensors")
    expected = {"wider": rf"{k + 3} features wide, but the classifier's last block gives {k}",
                "rows": r"M >= 2 rows", "nan": "NaN or infinite", "keys": r"'features'"}[edit]
    with pytest.raises(ModelFormatError, match=expected) as info:
        load_detector(model)
    assert str(model / "knn.safetensors") in str(info.value)
    out = tmp_path / "s.csv"
    code = main(["score", str(model), str(tiny_model[1]["test/good"]), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "knn.safetensors" in err and "Traceback" not in err
    assert not out.exists()


@pytest.fixture
def onnx_file(tiny_model, tmp_path) -> Path:
    pytest.importorskip("onnxruntime")
    from spadecam.deploy import export_onnx

    return export_onnx(tiny_model[0], tmp_path / "m.onnx")


def test_an_onnx_file_with_64_bytes_overwritten_is_refused(onnx_file, tiny_model, tmp_path,
                                                           capsys):
    """The ONNX file carried no sha256: a damaged one was scored silently (every image
    flagged)."""
    from spadecam.deploy import OnnxSPADE

    OnnxSPADE(onnx_file)  # the file as written loads
    data = bytearray(onnx_file.read_bytes())
    for where in (len(data) // 3, len(data) // 2, len(data) - 70):
        bad = bytearray(data)
        bad[where : where + 64] = bytes(64)
        path = tmp_path / f"bad{where}.onnx"
        path.write_bytes(bytes(bad))
        with pytest.raises(ModelFormatError, match=str(path)):
            OnnxSPADE(path)
        out = tmp_path / f"bad{where}.csv"
        code = main(["score", "--onnx", str(path), str(tiny_model[1]["test/good"]),
                     "--out", str(out)])
        assert code == 2 and str(path) in capsys.readouterr().err and not out.exists()


def _edited(onnx_file: Path, out: Path, graph=None, **metadata) -> Path:
    """The graph (or ``graph``) with metadata values replaced, saved by onnx itself (so
    without spadecam's sha256, as an edit or another tool's file would be)."""
    import onnx

    source = onnx.load(str(onnx_file))
    model = source if graph is None else graph
    props = {p.key: p.value for p in source.metadata_props if p.key != "spadecam_sha256"}
    props.update({k: json.dumps(v) for k, v in metadata.items()})
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize("edit", [{"image_size": 64}, {"channels": 3}])
def test_onnx_metadata_that_contradicts_the_graph_is_refused(onnx_file, tmp_path, edit):
    """image_size 64 or channels 3 on a 16-px grey graph gave an onnxruntime traceback."""
    from spadecam.deploy import OnnxSPADE

    path = _edited(onnx_file, tmp_path / "edited.onnx", **edit)
    with pytest.warns(UserWarning, match="carries no sha256"), \
            pytest.raises(ModelFormatError, match=rf"{path}: the graph's input 'images' has "
                                                  r"shape \[.*, 1, 16, 16\] but the metadata"):
        OnnxSPADE(path)
    # unedited but without the sha256 (an older export): read, with the warning
    plain = _edited(onnx_file, tmp_path / "plain.onnx")
    with pytest.warns(UserWarning, match="carries no sha256"):
        assert OnnxSPADE(plain).image_size == 16


def test_another_tools_graph_with_spadecam_metadata_is_refused_naming_the_file(onnx_file,
                                                                               tmp_path):
    """It gave "Required inputs (['x']) are missing" without naming the file."""
    import onnx
    from onnx import TensorProto, helper

    from spadecam.deploy import OnnxSPADE

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 16, 16])
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1, 16, 16])
    graph = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["score"])],
                                                "other", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 20)])
    graph.ir_version = onnx.load(str(onnx_file)).ir_version
    path = _edited(onnx_file, tmp_path / "other.onnx", graph=graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ModelFormatError, match=rf"{path}: the graph's inputs are \['x'\]"):
            OnnxSPADE(path)


@pytest.mark.parametrize("threshold, label", [("Infinity", "0"), ("-Infinity", "1")])
def test_an_infinite_threshold_is_scored_exported_and_scored_again(model, tiny_model, tmp_path,
                                                                   threshold, label):
    """A threshold of "Infinity" (documented as valid) scored and exported, and then
    `score --onnx` refused its own export ("threshold must be a finite number")."""
    pytest.importorskip("onnxruntime")
    config = json.loads((model / "config.json").read_text())
    config["threshold_"] = threshold
    (model / "config.json").write_text(json.dumps(config))
    good = str(tiny_model[1]["test/good"])
    assert main(["score", str(model), good, "--out", str(tmp_path / "t.csv")]) == 0
    assert main(["export", str(model), "--out", str(tmp_path / "m.onnx")]) == 0
    assert main(["score", "--onnx", str(tmp_path / "m.onnx"), good,
                 "--out", str(tmp_path / "o.csv")]) == 0
    for name in ("t.csv", "o.csv"):
        with open(tmp_path / name, newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows and {r["label"] for r in rows} == {label}
        assert np.isfinite([float(r["score"]) for r in rows]).all()


def test_a_feature_bank_layer_that_names_no_block_is_refused(model):
    """forward_features wraps the block index, so a knn.layer of 7 on a 3-block classifier
    silently read another block."""
    config = json.loads((model / "config.json").read_text())
    config["knn"]["layer"] = 7
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match=r"knn.layer 7 in config.json names no block"):
        load_detector(model)


def test_the_cli_warns_when_files_meet_a_model_fitted_on_float_arrays(tmp_path, capsys):
    """A model the API fitted on float arrays may have been scaled otherwise than files are
    read (8-bit / 255): scoring files says so; uint8 arrays need no warning."""
    from PIL import Image

    from spadecam import VAEDetector
    from spadecam.models import VAEConfig
    from spadecam.training import TrainConfig

    rng = np.random.default_rng(0)
    x8 = rng.integers(0, 256, (12, 16, 16), dtype=np.uint8)
    Image.fromarray(x8[0]).save(tmp_path / "a.png")
    train = TrainConfig(epochs=1, batch_size=8, progress=False, seed=0)
    for name, x in (("u8", x8), ("float", x8 / 255.0)):
        det = VAEDetector(vae_config=VAEConfig(latent_dim=4, channels=(4, 8)), vae_train=train,
                          precision="32").fit(x, np.zeros(12))
        det.save(tmp_path / name)
        saved = json.loads((tmp_path / name / "config.json").read_text())
        assert saved["preprocessing"]["fit_input"] == {"u8": "uint8", "float": "float"}[name]
        assert main(["score", str(tmp_path / name), str(tmp_path / "a.png")]) == 0
        err = capsys.readouterr().err
        assert ("fitted through the Python API on float arrays" in err) == (name == "float")
