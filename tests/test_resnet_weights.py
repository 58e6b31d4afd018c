"""ResNet-18 and Wide-ResNet-50-2 from a torchvision-format state dict the user has: files the
tests make with torchvision's key names and shapes, the network checked against a forward pass
written out from those tensors (torchvision's layout: stride in the first 3x3 conv of a basic
block and in the 3x3 conv of a bottleneck, 1x1 downsample), a wrong file refused naming it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spadecam.models.efficientnet import PretrainedWeightsError
from spadecam.models.resnet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ResNetClassifier,
    ResNetConfig,
    load_torchvision_weights,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def torchvision_state(widths, blocks, bottleneck: bool, factor: int = 1, seed: int = 0) -> dict:
    """A state dict with torchvision's ResNet key names and shapes, random values (batch-norm
    statistics too, so that they matter)."""
    g = torch.Generator().manual_seed(seed)

    def conv(c_out, c_in, k):
        return torch.randn(c_out, c_in, k, k, generator=g) * (2 / (c_in * k * k)) ** 0.5

    def bn(prefix, c, out):
        out[f"{prefix}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        out[f"{prefix}.bias"] = 0.1 * torch.randn(c, generator=g)
        out[f"{prefix}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        out[f"{prefix}.running_var"] = 1 + 0.1 * torch.rand(c, generator=g)
        out[f"{prefix}.num_batches_tracked"] = torch.tensor(7)

    s: dict[str, torch.Tensor] = {"conv1.weight": conv(widths[0], 3, 7)}
    bn("bn1", widths[0], s)
    c_in = widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks), start=1):
        for j in range(n):
            p = f"layer{i}.{j}"
            stride = 2 if (i > 1 and j == 0) else 1
            if bottleneck:
                mid, c_out = w * factor, 4 * w
                s[f"{p}.conv1.weight"] = conv(mid, c_in, 1)
                bn(f"{p}.bn1", mid, s)
                s[f"{p}.conv2.weight"] = conv(mid, mid, 3)
                bn(f"{p}.bn2", mid, s)
                s[f"{p}.conv3.weight"] = conv(c_out, mid, 1)
                bn(f"{p}.bn3", c_out, s)
            else:
                c_out = w
                s[f"{p}.conv1.weight"] = conv(c_out, c_in, 3)
                bn(f"{p}.bn1", c_out, s)
                s[f"{p}.conv2.weight"] = conv(c_out, c_out, 3)
                bn(f"{p}.bn2", c_out, s)
            if stride != 1 or c_in != c_out:
                s[f"{p}.downsample.0.weight"] = conv(c_out, c_in, 1)
                bn(f"{p}.downsample.1", c_out, s)
            c_in = c_out
    s["fc.weight"] = torch.randn(1000, c_in, generator=g)
    s["fc.bias"] = torch.randn(1000, generator=g)
    return s


def reference_forward(s: dict, x: torch.Tensor, blocks, bottleneck: bool) -> torch.Tensor:
    """torchvision's ResNet forward up to layer4, written out from the state dict's tensors."""
    def bn(h, p):
        return F.batch_norm(h, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"],
                            s[f"{p}.bias"], False, 0.0, 1e-5)

    x = (x.expand(-1, 3, -1, -1) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD).view(1, 3, 1, 1)
    h = F.relu(bn(F.conv2d(x, s["conv1.weight"], stride=2, padding=3), "bn1"))
    h = F.max_pool2d(h, 3, 2, 1)
    for i, n in enumerate(blocks, start=1):
        for j in range(n):
            p = f"layer{i}.{j}"
            stride = 2 if (i > 1 and j == 0) else 1
            if bottleneck:
                o = F.relu(bn(F.conv2d(h, s[f"{p}.conv1.weight"]), f"{p}.bn1"))
                o = F.relu(bn(F.conv2d(o, s[f"{p}.conv2.weight"], stride=stride, padding=1),
                              f"{p}.bn2"))
                o = bn(F.conv2d(o, s[f"{p}.conv3.weight"]), f"{p}.bn3")
            else:
                o = F.relu(bn(F.conv2d(h, s[f"{p}.conv1.weight"], stride=stride, padding=1),
                              f"{p}.bn1"))
                o = bn(F.conv2d(o, s[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            short = h
            if f"{p}.downsample.0.weight" in s:
                short = bn(F.conv2d(h, s[f"{p}.downsample.0.weight"], stride=stride),
                           f"{p}.downsample.1")
            h = F.relu(o + short)
    return h


@pytest.mark.parametrize("kind", ["resnet18", "wide_resnet50_2"])
def test_a_torchvision_file_gives_torchvisions_forward(tmp_path, kind):
    """Small widths, the real layouts: ResNet-18's blocks (2, 2, 2, 2), Wide-ResNet-50-2's
    (3, 4, 6, 3) bottlenecks with twice the inner width."""
    bottleneck = kind == "wide_resnet50_2"
    widths = (8, 16, 16, 16)
    blocks = (3, 4, 6, 3) if bottleneck else (2, 2, 2, 2)
    state = torchvision_state(widths, blocks, bottleneck, factor=2)
    torch.save(state, tmp_path / "weights.pth")
    cfg = (ResNetConfig.wide_resnet50_2 if bottleneck else ResNetConfig)(
        widths=widths, in_channels=1, weights=str(tmp_path / "weights.pth"))
    assert cfg.mean == IMAGENET_MEAN and cfg.std == IMAGENET_STD  # what the weights expect
    model = ResNetClassifier(cfg).load_pretrained().eval()
    x = torch.rand(2, 1, 64, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x, -1),
                                   reference_forward(state, x, blocks, bottleneck),
                                   rtol=1e-4, atol=1e-5)
    from spadecam.models import backbone_name

    assert backbone_name(cfg) == kind
    # a file saved from DataParallel ("module." prefixes) or inside a checkpoint dict
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}},
               tmp_path / "ckpt.pth")
    loaded = load_torchvision_weights(tmp_path / "ckpt.pth", model)
    torch.testing.assert_close(loaded["1.0.conv1.weight"], state["layer1.0.conv1.weight"])


def test_a_file_of_another_network_is_refused_naming_it_and_the_key(tmp_path):
    widths, blocks = (8, 16, 16, 16), (2, 2, 2, 2)
    model = ResNetClassifier(ResNetConfig(widths=widths, in_channels=3, weights="unused.pth"))
    state = torchvision_state(widths, blocks, False)
    wrong = dict(state, **{"layer2.0.conv1.weight": torch.zeros(16, 8, 5, 5)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(PretrainedWeightsError, match=r"wrong.pth: layer2.0.conv1.weight has shape "
                                                     r"\(16, 8, 5, 5\), but a ResNet of basic "
                                                     r"blocks .* expects \(16, 8, 3, 3\)"):
        load_torchvision_weights(tmp_path / "wrong.pth", model)
    # ResNet-50-style (bottleneck) weights on a ResNet-18: the first 1x1 conv is named
    torch.save(torchvision_state(widths, blocks, True), tmp_path / "r50.pth")
    with pytest.raises(PretrainedWeightsError, match=r"r50.pth: layer1.0.conv1.weight has shape "
                                                     r"\(8, 8, 1, 1\).*another network"):
        load_torchvision_weights(tmp_path / "r50.pth", model)
    # keys the network does not have
    torch.save(dict(state, **{"layer1.0.conv3.weight": torch.zeros(8, 8, 1, 1)}),
               tmp_path / "extra.pth")
    with pytest.raises(PretrainedWeightsError, match=r"extra.pth is not a state dict of a "
                                                     r"ResNet of basic blocks.*"
                                                     r"unexpected keys \['layer1.0.conv3"):
        load_torchvision_weights(tmp_path / "extra.pth", model)
    torch.save({k: v for k, v in state.items() if "layer4" not in k}, tmp_path / "short.pth")
    with pytest.raises(PretrainedWeightsError, match=r"missing \d+ keys, e.g. \['4.0"):
        load_torchvision_weights(tmp_path / "short.pth", model)
    # files from before torch 0.4.1 have no num_batches_tracked: read all the same
    torch.save({k: v for k, v in state.items() if "num_batches" not in k}, tmp_path / "old.pth")
    assert "1.0.bn1.weight" in load_torchvision_weights(tmp_path / "old.pth", model)
    (tmp_path / "junk.pth").write_text("{}")
    with pytest.raises(PretrainedWeightsError, match="junk.pth: not a state dict"):
        load_torchvision_weights(tmp_path / "junk.pth", model)


@pytest.mark.slow
def test_spadecam_train_checks_the_weights_file_before_reading_any_image(tmp_path, capsys):
    """A wrong file is one error naming it, before any training (nothing written); a right
    one trains ResNet-18 from it; --backbone-weights on another backbone is refused."""
    from _own_images import make_folders
    from spadecam.cli import main

    folders = make_folders(tmp_path / "data", n_normal=12, n_anomaly=4, n_test=2)
    base = ["train", "--recipe", "spadecam", "--normal", str(folders["train/good"]), "--anomaly",
            str(folders["train/defect"]), "--image-size", "32", "--latent-dim", "4", "--epochs",
            "1", "--batch-size", "8", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "a"), "--backbone", "small",
                 "--backbone-weights", str(tmp_path / "x.pth")]) == 2
    assert "--backbone-weights is for --backbone resnet18" in capsys.readouterr().err
    bad = torchvision_state((64, 128, 256, 512), (2, 2, 2, 2), False)
    bad["layer4.1.conv2.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(bad, tmp_path / "bad.pth")
    assert main([*base, "--out", str(tmp_path / "b"), "--backbone", "resnet18",
                 "--backbone-weights", str(tmp_path / "bad.pth")]) == 2
    err = capsys.readouterr().err
    assert "bad.pth: layer4.1.conv2.weight has shape (3, 3, 3, 3)" in err
    assert "read " not in err and not (tmp_path / "b").exists()
    good = torchvision_state((64, 128, 256, 512), (2, 2, 2, 2), False)
    torch.save(good, tmp_path / "good.pth")
    assert main([*base, "--out", str(tmp_path / "c"), "--backbone", "resnet18",
                 "--backbone-weights", str(tmp_path / "good.pth")]) == 0
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["cnn_backbone"] == "resnet18"
    assert config["cnn_config"]["weights"] == str(tmp_path / "good.pth")
    assert np.allclose(config["cnn_config"]["mean"], IMAGENET_MEAN)
    assert main(["score", str(tmp_path / "c"), str(folders["test/good"]), "--no-progress"]) == 0


def test_width_factor_is_an_integer_and_only_for_bottlenecks():
    with pytest.raises(ValueError, match="width_factor must be an integer >= 1 \\(1 for basic"):
        ResNetConfig(width_factor=2)
    with pytest.raises(ValueError, match="width_factor must be an integer"):
        ResNetConfig.wide_resnet50_2(width_factor=True)
    assert ResNetConfig.wide_resnet50_2().out_width == 2048


def test_loading_weights_leaves_the_callers_rng_alone(tmp_path):
    from spadecam.models.efficientnet import load_imagenet_weights

    state = torch.get_rng_state()
    load_imagenet_weights()
    assert torch.equal(torch.get_rng_state(), state)
