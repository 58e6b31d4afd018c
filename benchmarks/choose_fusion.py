"""Choose the margin fusion's weight and margin on ELPV's validation split, from the scores
``benchmarks/probe_pretrained.py --dump`` kept (no training here).

For each (weight w, margin m) of a grid, the score z(max e) + w * max(0, z(l) - m) of
:mod:`spadecam.fusion` (z in units of the held-out normal cells, as ``SPADE.fit`` computes
them) is scored on the columns unseen_type / mono, poly, all, few_labels_10 / all and
few_labels_50 / all of every seed given. The rule, fixed before looking: the largest mean
gain over the one-class score (the patch error alone) among the pairs whose every column of
every seed stays within 0.005 of that one-class score (the labels may add, never subtract).

With ``--bank`` (one ``benchmarks/dump_image_bank.py`` file per dump, in the same order) the
one-class score is the recipe's with the image-level bank, t / sd(t), t = z(max e) + z(d)
(:func:`spadecam.fusion.error_term`), and the gains are measured against it.

Usage: python benchmarks/choose_fusion.py [--key frozen_logit] [--bank B0.npz B1.npz ...]
SEED0.npz SEED1.npz ...
Prints the grid (mean AUROC per column over the seeds, the mean gain, the worst column) and
the chosen pair.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.metrics import roc_auc_score

COLUMNS = (("unseen_type", "mono"), ("unseen_type", "poly"), ("unseen_type", "all"),
           ("few_labels_10", "all"), ("few_labels_50", "all"))
WEIGHTS = (0.5, 1.0, 2.0, 4.0)
MARGINS = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
#: How far below the one-class score a column may fall on one seed for a pair to qualify.
TOLERANCE = 0.005


def _z(v: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return (v - ref.mean()) / ref.std()


def column_aurocs(d: dict, key: str, weight: float | None, margin: float) -> np.ndarray:
    """AUROC per column of one seed's dump; ``weight`` None: the one-class score alone."""
    y = d["y"]
    z_e = _z(d["patch_max"], d["held_patch_max"])
    if "knn" in d:  # the image-level bank joins the one-class term (spadecam.fusion)
        t = z_e + _z(d["knn"], d["held_knn"])
        z_e = t / (_z(d["held_patch_max"], d["held_patch_max"])
                   + _z(d["held_knn"], d["held_knn"])).std()
    out = []
    for prot, col in COLUMNS:
        held = d[f"{prot}/{'held_logit' if key == 'logit' else 'frozen_held_logit'}"]
        z_c = _z(d[f"{prot}/{key}"], held)
        s = z_e if weight is None else z_e + weight * np.maximum(0.0, z_c - margin)
        idx = d[f"{prot}/{col}/idx"]
        out.append(roc_auc_score(y[idx], s[idx]))
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dumps", nargs="+")
    ap.add_argument("--key", default="frozen_logit", help="frozen_logit (the head alone) or "
                    "logit (the fine-tuned classifier)")
    ap.add_argument("--bank", nargs="+", default=None,
                    help="benchmarks/dump_image_bank.py files, one per dump, same order")
    args = ap.parse_args()
    dumps = [dict(np.load(f)) for f in args.dumps]
    if args.bank:
        if len(args.bank) != len(dumps):
            ap.error(f"--bank needs one file per dump ({len(dumps)}), got {len(args.bank)}")
        for d, f in zip(dumps, args.bank):
            b = dict(np.load(f))
            if not np.array_equal(b["y"], d["y"]):
                ap.error(f"{f}: its validation cells are not the dump's")
            d.update(knn=b["knn"], held_knn=b["held_knn"])
    base = np.stack([column_aurocs(d, args.key, None, 0.0) for d in dumps])
    print("columns: " + ", ".join(f"{p} / {c}" for p, c in COLUMNS))
    what = "patch error and image bank" if args.bank else "patch error alone"
    print(f"one-class ({what}): {' '.join(f'{v:.3f}' for v in base.mean(0))}")
    best = None
    for w in WEIGHTS:
        for m in MARGINS:
            got = np.stack([column_aurocs(d, args.key, w, m) for d in dumps])
            gain, worst = float((got - base).mean()), float((got - base).min())
            ok = worst >= -TOLERANCE
            print(f"w {w:g}, m {m:g}: {' '.join(f'{v:.3f}' for v in got.mean(0))}  mean gain "
                  f"{gain:+.3f}, worst column {worst:+.3f}{'' if ok else '  (subtracts)'}")
            if ok and (best is None or gain > best[0]):
                best = (gain, w, m)
    if best is None:
        print("no pair keeps every column within the tolerance")
    else:
        print(f"chosen: weight {best[1]:g}, margin {best[2]:g} (mean gain {best[0]:+.3f})")


if __name__ == "__main__":
    main()
