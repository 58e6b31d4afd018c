"""A memory bank of normal images in the classifier's feature space: the kNN distance.

Our extension of SPADE, not in the paper. The classifier of eq. 2, trained on the
normal images and the known anomalies, also learns features of what normal images look like;
an image whose globally pooled features of one block lie far from every normal training
image's is unlike the normals in a way the reconstruction error may miss (an unknown kind,
or a known kind from only 1-10 labelled images). On ELPV's validation split a 5-NN distance
in the middle block's pooled features scored 0.80 / 0.81 / 0.83 AUROC (few_labels_10 /
few_labels_50 / unseen_type, seeds 0-2) against SPADE's 0.72 / 0.73 / 0.78; an untrained
classifier's features gave 0.73 (benchmarks/results/elpv_validation_scores.log). Alone it is
weak on Noisy-MNIST (0.82 / 0.88 for known 3 / 9 against SPADE's 0.955 / 0.974), so it
multiplies SPADE's score rather than replacing it: e' x d at the last block keeps Noisy-MNIST
at 0.955 / 0.974 and lifts ELPV to 0.785 / 0.788 / 0.812 (the default of ``SPADE()``).

:class:`FeatureBank` holds the features of the normal training images; its distance is the
mean Euclidean distance to the ``k`` nearest of them, divided by the median of the same
distance over the bank itself (each entry leaving itself out), so 1 is a typical normal
image. SPADE multiplies its weighted error by distance ** ``knn_power``
(:class:`spadecam.scoring.SPADEScorer`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spadecam._runtime import is_exporting

__all__ = ["SAME_IMAGE", "FeatureBank", "knn_distance", "pooled_features"]

#: A bank entry closer than this share of the bank's scale is the query itself (a training
#: image scored for the threshold, its features recomputed in another batch or precision).
SAME_IMAGE = 1e-3


def pooled_features(cnn: Any, u: torch.Tensor, layer: int) -> torch.Tensor:
    """Globally average-pooled output of classifier block ``layer``, (N, K) float32.

    ``cnn``: a :class:`~spadecam.models.classifier.FeatureClassifier`; u (N, C, H, W) float in
    [0, 1]; ``valid`` is not needed (letterbox padding is the same 0 for every image).
    """
    return cnn.forward_features(u, layer).float().mean(dim=(2, 3))


def knn_distance(query: torch.Tensor, bank: torch.Tensor, k: int,
                 same_below: float = 0.0) -> torch.Tensor:
    """Mean Euclidean distance of each query row to its ``k`` nearest bank rows, (N,) float32.

    The nearest bank row is skipped when its distance is <= ``same_below``: the query is
    itself in the bank, as the training images are when the threshold is set from their
    scores, and is measured against the others. The distances are exact, from the
    differences (a matrix product only picks the candidates that are measured, :func:`_nearest`),
    so an image's own entry gives exactly 0 when its features are recomputed bit for bit;
    ``same_below`` > 0 allows for features recomputed in another batch.

    Raises
    ------
    ValueError
        ``k`` < 1 or larger than the bank less one.
    """
    if not 1 <= k < len(bank):
        raise ValueError(f"knn_k must be between 1 and the bank size - 1 ({len(bank) - 1}), "
                         f"got {k}")
    if is_exporting():
        # an exported graph (ONNX, spadecam.deploy) has no cdist: the same exact distances
        # from the differences, (N, M, K) in memory (the ONNX runner sizes its batches so)
        d = (query.float()[:, None, :] - bank.float()[None]).square().sum(-1).sqrt()
        near = d.topk(k + 1, dim=1, largest=False).values
    else:
        near = _nearest(query.float(), bank.float(), k + 1)
    own = near[:, :1] <= same_below
    return torch.where(own, near[:, 1:], near[:, :k]).mean(dim=1)


def _exact(query: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (N, M) from the differences: no matrix-product shortcut (exact 0
    for equal rows), each pair's value the same whatever else is in the batch."""
    return torch.cdist(query, bank, compute_mode="donot_use_mm_for_euclid_dist")


def _nearest(query: torch.Tensor, bank: torch.Tensor, n: int,
             candidates: int | None = None) -> torch.Tensor:
    """The ``n`` smallest exact distances of each query row to the bank rows, ascending.

    query (N, K) and bank (M, K) float32 on one device, 1 <= n <= M. Returns (N, n) float32,
    ``_exact(query, bank).topk(n, largest=False).values`` bit for bit.

    The exact all-pairs distances were the feature bank's slow part (0.7 s of the 2.6 s that
    building a bank of the 5,923 Noisy-MNIST zeros took on a 2-core AVX2 CPU). Candidates
    (``candidates`` per row, default 2n + 16) are found with a matrix product instead: squared
    distances ||q'||^2 + ||b'||^2 - 2 q'.b' of the features q', b' centred on the bank's mean,
    in float64 (no float32 matmul precision setting, TF32 or bf16, reaches it), and only they
    are measured exactly. The product's rounding error is at most (K + 8) u (||q'|| +
    max ||b'||)^2 with u = 2^-53 (a dot product's worst case in any summation order, the sums
    of the norms, and the centring), taken twice; a row keeps its candidates' result only when
    its n-th exact distance, less its own float32 rounding, lies below every other bank row's
    product distance less that bound, else it is measured against the whole bank. So the
    result never depends on the shortcut (NaN features send their rows to the whole bank).
    """
    m = len(bank)
    c = 2 * n + 16 if candidates is None else max(int(candidates), n)
    if m <= 4 * c:
        return _exact(query, bank).topk(n, dim=1, largest=False).values
    with torch.autocast(query.device.type, enabled=False):
        centre = bank.double().mean(dim=0)
        qc, bc = query.double() - centre, bank.double() - centre
        qn, bn = qc.square().sum(dim=1), bc.square().sum(dim=1)
        d2 = torch.addmm(qn[:, None] + bn[None], qc, bc.T, alpha=-2.0)
        approx, idx = d2.topk(c, dim=1, largest=False)  # ascending
        cand = _exact(query[:, None, :], bank[idx])[:, 0]  # (N, c), the same per-pair values
        near = cand.topk(n, dim=1, largest=False).values
        k = query.shape[1]
        u64, u32 = torch.finfo(torch.float64).eps / 2, torch.finfo(torch.float32).eps / 2
        # twice the bound: margin for the bound's second-order terms
        err = 2 * (k + 8) * u64 * (qn.sqrt() + bn.max().sqrt()) ** 2
        # every bank row outside the candidates has a product distance >= approx[:, -1]; the
        # float32 exact distances carry their own rounding, (k + 2) u32 of the square (twice)
        safe = near[:, -1].double() ** 2 * (1 + 2 * (k + 4) * u32) <= approx[:, -1] - err
        if not bool(safe.all()):
            redo = (~safe).nonzero()[:, 0]
            near[redo] = _exact(query[redo], bank).topk(n, dim=1, largest=False).values
    return near


class FeatureBank(nn.Module):
    """Pooled classifier features of the normal training images (M, K) and their scale.

    Parameters
    ----------
    features : Tensor (M, K), :func:`pooled_features` of the normal training images
    layer : int, the classifier block they were read from
    k : int >= 1, neighbours averaged (default 5; at most M - 1, the number of others)
    scale : float > 0, optional
        The distance dividing :meth:`forward`'s; default the median over the bank of each
        entry's own kNN distance to the others.

    Raises
    ------
    ValueError
        A bank of fewer than 2 rows, or a scale that is not > 0.
    """

    features: torch.Tensor

    def __init__(self, features: torch.Tensor, layer: int, k: int = 5,
                 scale: float | None = None) -> None:
        super().__init__()
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"the feature bank needs at least 2 normal images as an (M, K) "
                             f"tensor, got shape {tuple(features.shape)}")
        k = min(int(k), len(features) - 1)  # few normal images: every other one is a neighbour
        # a copy: features made under inference mode cannot enter autograd-tracked code
        self.register_buffer("features", features.detach().float().clone().contiguous())
        self.layer, self.k = int(layer), int(k)
        if scale is None:
            own = torch.cat([knn_distance(self.features[i : i + 1024], self.features, self.k)
                             for i in range(0, len(self.features), 1024)])
            scale = float(own.median())
        if not scale > 0:
            raise ValueError(f"the feature bank's scale must be > 0, got {scale!r} (every "
                             "normal image's features identical?)")
        self.scale = float(scale)

    def forward(self, cnn: Any, u: torch.Tensor,
                features: torch.Tensor | None = None) -> torch.Tensor:
        """kNN distance (N,) float32 >= 0 of u (N, C, H, W) in [0, 1]; 1 = a typical normal.

        ``features``: u's :func:`pooled_features` at block ``layer`` when already computed
        (:func:`spadecam.cam.grad_cam_logits_features` reads them in the Grad-CAM's forward);
        then ``cnn`` is not run.
        """
        with torch.no_grad():  # a per-image factor: no gradient flows through it
            q = pooled_features(cnn, u, self.layer) if features is None else features
            return knn_distance(q, self.features, self.k, SAME_IMAGE * self.scale) / self.scale
