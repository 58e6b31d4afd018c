"""`spadecam train` as a new user runs it, on ELPV cells as folders: its wall time, the gaps
between its lines under --no-progress, and what it scores on the known and the unknown kind.

A seeded 75 / 25 split (numpy seed 0) of the cells with defect probability 0 (normal), of the
defective (probability >= 2/3) mono cells and of the defective poly cells; the training folders
are the normal and the mono cells (about 1,400), poly is never shown. Then:

1. ``spadecam train --normal train/good --anomaly train/mono --out M --no-progress`` with the
   recipe asked for (default "pretrained"), timed, every line of its output time-stamped;
2. ``spadecam score M test/good test/mono test/poly``: AUROC on mono (the known kind), poly
   (the unknown one) and both;
3. the same for the CNN-based detector (``--detector cnn``, same recipe) and for the one-class
   pretrained score (the trained SPADE's error term alone: ``evidence_weight=0``, through the
   Python API on the same model directory).

Usage: python benchmarks/train_elpv_cli.py [--recipe pretrained] [--work DIR]
Needs the benchmarks extra (elpv-dataset). Prints the lines and a summary; the log is kept in
benchmarks/results/ with the machine's CPU and load.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score


def make_folders(work: Path) -> dict[str, int]:
    from spadecam.bench.protocols import elpv_dir

    root = Path(elpv_dir())
    rows = [ln.split() for ln in (root / "labels.csv").read_text().splitlines() if ln.strip()]
    rng = np.random.default_rng(0)
    kinds = {"good": [r[0] for r in rows if float(r[1]) == 0],
             "mono": [r[0] for r in rows if float(r[1]) >= 2 / 3 and r[2] == "mono"],
             "poly": [r[0] for r in rows if float(r[1]) >= 2 / 3 and r[2] == "poly"]}
    shutil.rmtree(work / "data", ignore_errors=True)
    counts = {}
    for kind, names in kinds.items():
        names = list(names)
        rng.shuffle(names)
        k = int(round(0.75 * len(names)))
        for split, part in (("train", names[:k]), ("test", names[k:])):
            if split == "train" and kind == "poly":
                continue  # the unknown kind is never shown
            d = work / "data" / split / kind
            d.mkdir(parents=True)
            for n in part:
                os.symlink(root / n, d / Path(n).name)
            counts[f"{split}/{kind}"] = len(part)
    return counts


def run(cmd: list[str]) -> tuple[float, list[tuple[float, str]]]:
    """Run a command; (wall seconds, its output lines with the seconds since the start)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((time.perf_counter() - t0, line.rstrip()))
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n" + "\n".join(t for _, t in lines))
    return time.perf_counter() - t0, lines


def aurocs(scores: dict[str, float], folders: Path) -> dict[str, float]:
    kind = {str(p): p.parent.name for k in ("good", "mono", "poly")
            for p in (folders / k).iterdir()}
    y = {"mono": [], "poly": [], "all": []}
    for path, s in scores.items():
        k = kind[path]
        for col in ("mono", "poly", "all"):
            if k == "good" or k == col or (col == "all"):
                y[col].append((int(k != "good"), s))
    return {c: roc_auc_score([a for a, _ in v], [b for _, b in v]) for c, v in y.items()}


def score_folder(model: Path, work: Path, spadecam: str) -> dict[str, float]:
    out = work / f"{model.name}.csv"
    test = work / "data" / "test"
    run([spadecam, "score", str(model), str(test / "good"), str(test / "mono"),
         str(test / "poly"), "--out", str(out), "--no-progress"])
    with open(out) as f:
        return {r["path"]: float(r["score"]) for r in csv.DictReader(f)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="pretrained")
    ap.add_argument("--work", default="/tmp/spadecam_train_elpv")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    spadecam = str(Path(sys.executable).parent / "spadecam")
    print("folders:", make_folders(work))
    data = work / "data"
    results = {}
    for detector in ("spade", "cnn"):
        model = work / f"model_{detector}"
        shutil.rmtree(model, ignore_errors=True)
        wall, lines = run([spadecam, "train", "--normal", str(data / "train" / "good"),
                           "--anomaly", str(data / "train" / "mono"), "--out", str(model),
                           "--recipe", args.recipe, "--detector", detector, "--no-progress"])
        gaps = np.diff([0.0] + [t for t, _ in lines])
        print(f"\nspadecam train --recipe {args.recipe} --detector {detector}: {wall:.0f} s, "
              f"{len(lines)} lines, longest gap between lines {gaps.max():.1f} s")
        for t, line in lines:
            print(f"  [{t:6.1f} s] {line}")
        results[detector] = aurocs(score_folder(model, work, spadecam), data / "test")
    # the one-class score of the same SPADE: its error term alone
    from spadecam.detectors import load_detector

    det = load_detector(work / "model_spade")
    if getattr(det, "calibration_", None) is not None:
        det.set_params(evidence_weight=0.0)
        test = data / "test"
        paths = [p for k in ("good", "mono", "poly") for p in sorted((test / k).iterdir())]
        from spadecam.data.images import load_image

        x = [load_image(p) for p in paths]
        s = det.decision_function(x)
        results["one-class (error term alone)"] = aurocs(dict(zip(map(str, paths), s)), test)
    print("\nAUROC on the held-back quarter (mono: the known kind; poly: never shown):")
    for name, r in results.items():
        print(f"  {name}: mono {r['mono']:.3f}, poly {r['poly']:.3f}, all {r['all']:.3f}")


if __name__ == "__main__":
    main()
