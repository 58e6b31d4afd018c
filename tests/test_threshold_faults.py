"""End to end: the threshold fit learns never flags more normal images than the quantile rule
would, however the held-out known anomalies score, and every printed threshold reads back as
the one that decides.

The faults: a VAE that reconstructs the known anomalies well (flat grey images) scores them
below every normal image; F1 is then 0 at every cut and the F1-max tie-break took the lowest,
which flagged 50 of 50 fresh normal images without a word. And the report printed the
threshold to 5 digits, so "score > 0.17133" sat beside images scoring 0.17133376, flagged.
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch

from _own_images import save
from spadecam import VAEDetector
from spadecam._progress import SpadecamWarning
from spadecam.cli import main
from spadecam.metrics import image_metrics
from spadecam.models import VAEConfig
from spadecam.report import ReportImage, render_report
from spadecam.training import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")

SIZE = 16
QUANTILE = 0.9


def noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Normal images: uniform noise, which the tiny VAE cannot reconstruct (high error)."""
    return rng.integers(0, 256, (n, SIZE, SIZE)).astype(np.uint8)


def flat(n: int) -> np.ndarray:
    """The known anomalies: flat grey, which the VAE reconstructs well (low error)."""
    return np.full((n, SIZE, SIZE), 128, np.uint8)


def test_a_vae_blind_to_the_known_anomalies_keeps_the_quantile_threshold():
    rng = np.random.default_rng(0)
    x = np.concatenate([noise(rng, 80), flat(12)])
    y = np.r_[np.zeros(80), np.ones(12)].astype(np.int64)
    det = VAEDetector(vae_config=VAEConfig(image_size=SIZE, latent_dim=4, channels=(8, 8)),
                      vae_train=TrainConfig(epochs=3, batch_size=16, lr=3e-3, progress=False,
                                            seed=0),
                      threshold_holdout=0.25, threshold_quantile=QUANTILE)
    with pytest.warns(SpadecamWarning) as record:
        det.fit(x, y)
    text = " ".join(str(w.message) for w in record)
    assert "no held-out known anomaly scores above the lowest held-out normal score" in text
    assert "does not separate that kind of anomaly" in text
    assert "the F1-max cut would flag 20 of the 20 held-out normal images, the 0.9 quantile" in text
    assert det.threshold_source_ == "quantile_held_out_f1_rejected"
    assert det.threshold_n_images_ == {"normal": 20, "anomaly": 3}
    # exactly the quantile rule's threshold on the held-out normals
    hold = det._threshold_split(torch.as_tensor(y)).numpy()
    held = det.decision_function(x[hold & (y == 0)])
    assert det.threshold_ == np.quantile(held, QUANTILE)
    assert det.predict(x[hold & (y == 0)]).sum() <= round((1 - QUANTILE) * 20)
    # fresh normal images: about the quantile's share flagged, not all of them as before
    fresh = noise(rng, 50)
    assert det.predict(fresh).sum() <= 0.25 * 50
    assert det.predict(flat(4)).sum() == 0  # the detector does not see these: the warning said so


def _write(folder, images) -> None:
    for i, im in enumerate(images):
        save(folder / f"{i:03d}.png", im)


def test_train_says_the_f1_max_cut_was_rejected_and_evaluate_shows_it(tmp_path, capsys):
    rng = np.random.default_rng(0)
    _write(tmp_path / "train/good", noise(rng, 80))
    _write(tmp_path / "train/flat", flat(12))
    _write(tmp_path / "test/good", noise(rng, 12))
    _write(tmp_path / "test/flat", flat(4))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code = main([str(a) for a in [
            "train", "--detector", "vae", "--normal", tmp_path / "train/good",
            "--anomaly", tmp_path / "train/flat", "--out", tmp_path / "m", "--image-size", SIZE,
            "--latent-dim", 4, "--batch-size", 16, "--epochs", 3, "--no-progress",
            "--threshold-holdout", 0.25, "--threshold-quantile", QUANTILE]])
    out, err = capsys.readouterr()
    assert code == 0, err
    config = json.loads((tmp_path / "m/config.json").read_text())
    assert config["threshold_source"] == "quantile_held_out_f1_rejected"
    line = next(ln for ln in out.splitlines() if ln.startswith("threshold "))
    printed = line.split()[1]
    assert float(printed) == config["threshold_"]  # the printed threshold reads back exactly
    assert ("the 0.9 quantile of 20 held-out normal images' scores, not the F1-max point on "
            "them and 3 held-out known-anomaly images: no threshold flagging no more") in line
    assert "spadecam: warning: the threshold is not the F1-max cut" in err
    assert "does not separate that kind of anomaly" in err

    code = main([str(a) for a in [
        "evaluate", tmp_path / "m", "--normal", tmp_path / "test/good", "--anomaly",
        tmp_path / "test/flat", "--out", tmp_path / "metrics.json", "--report",
        tmp_path / "r.html", "--no-progress"]])
    out, err = capsys.readouterr()
    assert code == 0, err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["threshold_source"] == "quantile_held_out_f1_rejected"
    page = (tmp_path / "r.html").read_text()
    row = re.search(r"<th>threshold</th><td>(\S+) — ([^<]*)</td>", page)
    assert row is not None and float(row.group(1)) == config["threshold_"]
    assert "not the F1-max point on them and 3 held-out known-anomaly images" in row.group(2)


def test_report_threshold_text_reads_back_to_the_same_decisions():
    # every score 0.17133376, the threshold just below: all flagged; 5 digits printed
    # "score > 0.17133", which would flag none of them
    score, threshold = 0.17133376, 0.171333755
    y = np.r_[np.zeros(3), np.ones(3)].astype(int)
    s = np.full(6, score)
    cards = [ReportImage(f"x{i}.png", score, int(y[i]), 1, {}) for i in range(6)]
    page = render_report(title="t", labels=y, scores=s, metrics=image_metrics(y, s, threshold),
                         threshold=threshold, threshold_note="set by hand",
                         most_anomalous=cards, false_positives=cards[:3])
    row = re.search(r"<th>threshold</th><td>(\S+) — set by hand</td>", page)
    assert row is not None
    printed = float(row.group(1))
    assert printed == threshold and (s > printed).all()
    f1_cut = re.search(r"\(score &gt; ([^)]+)\)", page)  # the F1-max row's own threshold
    assert f1_cut is not None
    assert float(f1_cut.group(1)) == image_metrics(y, s)["image_f1_max_threshold"]
    # each card's score, read back, compares with the printed threshold as the score does
    shown = [float(v) for v in re.findall(r"score <b>([^<]+)</b> \(flagged\)", page)]
    assert len(shown) == 9 and all(v > printed for v in shown)
