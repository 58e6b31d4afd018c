"""The classifier protocol (features + GAP + linear head) and the one backbone name set."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from spadecam.cam import closed_form_applies, grad_cam
from spadecam.models import BACKBONES, FeatureClassifier, backbone_name
from spadecam.models.cnn import CNNConfig, ConvClassifier
from spadecam.models.resnet import ResNetConfig

MODELS = Path(__file__).resolve().parents[1] / "src" / "spadecam" / "models"


class _Tiny(FeatureClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.ModuleList([nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),
                                       nn.Sequential(nn.Conv2d(4, 3, 3, padding=1), nn.ReLU())])
        self.fc = nn.Linear(3, 2)


class _MaxHead(_Tiny):
    def head(self, a: torch.Tensor) -> torch.Tensor:  # not GAP: the closed form is wrong here
        return self.fc(a.amax(dim=(2, 3)))


def test_a_new_feature_classifier_gets_the_closed_form_and_it_is_exact():
    torch.manual_seed(0)
    m = _Tiny().eval()
    x = torch.rand(2, 1, 8, 8)
    assert closed_form_applies(m, -1) and not closed_form_applies(m, 0)
    torch.testing.assert_close(grad_cam(m, x, method="closed_form"),
                               grad_cam(m, x, method="autograd"), rtol=1e-5, atol=1e-7)
    # by hand, eq. 3-4 with GAP + linear: M = sum_k (w_0k / Z) A_k, Z = 8 * 8
    a = m.forward_features(x, -1)
    torch.testing.assert_close(grad_cam(m, x), (a * m.fc.weight[0][None, :, None, None]
                                                 / 64).sum(1))


def test_a_classifier_with_another_head_is_refused_the_closed_form():
    m = _MaxHead().eval()
    assert not closed_form_applies(m, -1)
    with pytest.raises(ValueError, match="GAP \\+ linear"):
        grad_cam(m, torch.rand(1, 1, 8, 8), method="closed_form")
    assert grad_cam(m, torch.rand(1, 1, 8, 8)).shape == (1, 8, 8)  # autograd still works


def test_one_backbone_name_set():
    assert list(BACKBONES) == ["small", "resnet18", "efficientnet_lite0", "wide_resnet50_2"]
    assert backbone_name(ConvClassifier(CNNConfig())) == "small"
    assert backbone_name(ResNetConfig()) == "resnet18"
    from spadecam.models.efficientnet import EfficientNetLiteConfig

    assert backbone_name(EfficientNetLiteConfig()) == "efficientnet_lite0"
    with pytest.raises(TypeError, match="not a spadecam classifier"):
        backbone_name(nn.Linear(2, 2))
    from spadecam.cli import _build_parser
    from spadecam.workflow import BACKBONES as WORKFLOW

    train = _build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    (action,) = [a for a in train._actions if a.dest == "backbone"]
    assert list(action.choices) == list(BACKBONES) == list(WORKFLOW)


def test_model_modules_import_no_sibling_that_imports_them():
    # cnn.py and resnet.py imported each other; now the graph has no cycle
    graph = {}
    for f in MODELS.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "spadecam.models."):
                deps.add(node.module.rsplit(".", 1)[1])
        graph[f.stem] = deps

    def reaches(a: str, b: str, seen: frozenset = frozenset()) -> bool:
        return any(d == b or (d not in seen and reaches(d, b, seen | {d}))
                   for d in graph.get(a, ()))

    assert not [m for m in graph if reaches(m, m)], graph


def test_a_users_own_module_is_spades_classifier_through_the_python_api(tmp_path):
    """Any torch trunk becomes SPADE's classifier by subclassing FeatureClassifier (blocks in
    ``features``, a 2-logit ``fc`` on the pooled last block): SPADE.from_models scores with
    it under both recipes (closed-form Grad-CAM for the ROI; the margin fusion beside the
    pretrained patch error), and saving it is refused with a message naming the class,
    since a model directory can only rebuild spadecam's own backbones."""
    import numpy as np

    from spadecam import SPADE
    from spadecam.models.vae import ConvVAE, VAEConfig

    class MyNet(FeatureClassifier):  # e.g. a trunk the user trained or loaded elsewhere
        def __init__(self, trunk: nn.Module, width: int) -> None:
            super().__init__()
            self.features = nn.ModuleList([trunk])
            self.fc = nn.Linear(width, 2)

    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
    mine = MyNet(trunk, 8).eval()
    x = np.random.default_rng(0).integers(0, 256, (12, 32, 32), dtype=np.uint8)
    vae = ConvVAE(VAEConfig(image_size=32, latent_dim=4, channels=(8, 8), in_channels=1)).eval()
    det = SPADE.from_models(vae, mine, recipe="spadecam", knn_power=0.0, precision="32")
    assert closed_form_applies(mine, -1)
    s = det.decision_function(x)
    assert s.shape == (12,) and np.isfinite(s).all()
    assert det.anomaly_map(x[:2]).shape == (2, 32, 32)
    pre = SPADE.from_models(None, mine, x_normal=x[:8, None], recipe="pretrained",
                            image_size=32, precision="32", patch_bank_size=200)
    pre.calibrate(x[8:, None])
    assert np.isfinite(pre.decision_function(x)).all()
    with pytest.raises((TypeError, ValueError), match="MyNet"):
        det.save(tmp_path / "m")
    assert not (tmp_path / "m" / "config.json").exists()
