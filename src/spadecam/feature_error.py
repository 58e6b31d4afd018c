"""A feature-space error map: each patch's distance to the nearest normal training patches in a
frozen pretrained backbone's features (PatchCore's memory bank, used as SPADE's error e).

SPADE weights an error map e by the classifier's ROI (Algorithm 1); the paper's e is the VAE's
reconstruction error |u - u_hat|. On real images a pretrained backbone's features separate
normal from anomalous patches better than a VAE trained from scratch reconstructs them (Roth
et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022), so this module
gives an e of the same shape from them:

* :class:`PatchFeatures`: the outputs of some blocks of a frozen backbone (default
  EfficientNet-Lite0's stages 3 and 5, strides 8 and 16, 40 + 112 channels), each averaged
  over its 3 x 3 neighbourhood (PatchCore's "locally aware" features), the coarser ones
  upsampled (bilinear) to the finest grid, concatenated: (N, D, h, w).
* :class:`PatchBank`: a memory bank (M, D) of normal training patches and, for each query
  patch, the Euclidean distance to its nearest bank patch; :meth:`PatchBank.error_map`
  upsamples those distances (bilinear) to the image, zero on letterbox padding: an error map
  (N, 1, H, W) >= 0 like the reconstruction error. The features are always computed in fp32.
* :func:`build_patch_bank`: the bank from normal images. Its size is bounded by a **seeded
  uniform subsample** of all their patches (``bank_size`` rows), not PatchCore's greedy
  coreset: the coreset's farthest-point selection costs O(patches x bank) distance rows
  (about 10^6 x 10^4 for 1,400 ELPV cells at 224 px, hours on 2 CPU cores), while the
  subsample costs nothing beyond the features and keeps memory at ``bank_size x D`` floats
  whatever the number of images. Patches mostly on letterbox padding are never drawn.

The nearest bank patch is found with matrix products (||b||^2 - 2 q.b on features centred on
the bank's mean) over chunks of the bank, so memory stays at (queries x chunk) floats (an
exported graph, ONNX, takes the whole bank in one product), and its distance is then measured
exactly from the difference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spadecam._progress import tick
from spadecam._runtime import is_exporting

__all__ = ["DEFAULT_PATCH_LAYERS", "PatchBank", "PatchFeatures", "build_patch_bank"]

#: EfficientNet-Lite0's blocks read by default: stages 3 and 5 (strides 8 and 16).
DEFAULT_PATCH_LAYERS = (3, 5)
#: Images the backbone runs at a time in eager mode: its activations at 224 px take about
#: 16 MB per image (a batch of 256 peaked at 4.4 GB, of 32 at 0.8 GB, on the CPU), so a
#: scoring batch of any size costs the memory of this many.
IMAGE_CHUNK = 32
#: Bank rows and query patches one distance product holds at a time (eager mode).
_CHUNK = 4096
_QUERY_CHUNK = 4096


def in_chunks(fn: Callable[..., Any], u: torch.Tensor, *others: torch.Tensor | None) -> Any:
    """``fn(u, *others)`` run :data:`IMAGE_CHUNK` images at a time (``others`` sliced like u;
    None passed as None) and its outputs concatenated along the batch: a tensor, or a tuple
    of tensors position by position (a None position stays None). One call when exporting
    (the graph has no loop) or for at most IMAGE_CHUNK images. The memory bound of every
    pass through a pretrained backbone."""
    n = IMAGE_CHUNK
    if is_exporting() or len(u) <= n:
        return fn(u, *others)
    outs = [fn(u[i : i + n], *(None if o is None else o[i : i + n] for o in others))
            for i in range(0, len(u), n)]
    if isinstance(outs[0], torch.Tensor):
        return torch.cat(outs)
    return tuple(None if parts[0] is None else torch.cat(parts) for parts in zip(*outs))


class PatchFeatures(nn.Module):
    """Locally aware patch features of a frozen backbone, (N, D, h, w) at the finest layer's grid.

    Parameters
    ----------
    backbone : a :class:`~spadecam.models.classifier.FeatureClassifier` whose ``features``
        blocks are read (its weights are frozen here; its head is not used)
    layers : tuple of int
        Blocks to read (ascending, >= 0), e.g. :data:`DEFAULT_PATCH_LAYERS`.
    pool : int
        Side of the average over each patch's neighbourhood (odd; 1 = none).
    stride : int >= 1
        The patch grid's step in cells of the finest layer read: 2 averages each 2 x 2 block
        of cells into one patch (a 14 x 14 grid at 224 px instead of 28 x 28; the grid of the
        issue's one-class probe). 1 (default): the finest grid.

    Raises
    ------
    ValueError
        No layers, an index outside the backbone's blocks, an even ``pool`` or a ``stride``
        below 1.
    """

    def __init__(self, backbone: nn.Module, layers: Sequence[int] = DEFAULT_PATCH_LAYERS,
                 pool: int = 3, stride: int = 1) -> None:
        super().__init__()
        blocks = backbone.get_submodule("features")
        assert isinstance(blocks, nn.ModuleList | nn.Sequential)
        self.layers = tuple(sorted(int(i) for i in layers))
        if not self.layers or not 0 <= self.layers[0] <= self.layers[-1] < len(blocks):
            raise ValueError(f"patch layers must be block indices 0..{len(blocks) - 1}, got "
                             f"{tuple(layers)}")
        if pool < 1 or pool % 2 == 0:
            raise ValueError(f"pool must be an odd number >= 1, got {pool}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = int(stride)
        # only the blocks up to the last one read: the rest of the backbone is never run
        self.blocks = nn.ModuleList(list(blocks)[: self.layers[-1] + 1])
        self.pool = int(pool)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PatchFeatures:
        """Always in eval mode: the backbone is frozen (its batch-norm statistics too)."""
        return super().train(False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """(N, D, h, w) float32 of images u (N, C, H, W) in [0, 1]; (h, w) the grid of the
        first layer read, D the sum of the layers' channel counts. Always in fp32, whatever
        autocast is on: the bank, the threshold and the exported graph see the same numbers."""
        return in_chunks(lambda v: self.combine(self.trunk(v, self.blocks)[1]), u)

    def trunk(self, u: torch.Tensor, blocks: nn.ModuleList
              ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run ``blocks`` (this extractor's, or a classifier's that :meth:`shares_blocks_with`
        it) up to the last layer read, in fp32 whatever autocast is on: (the last block's
        output, the maps of the layers read)."""
        maps = []
        x = u.float()
        with torch.autocast(u.device.type, enabled=False):
            for i in range(len(self.blocks)):
                x = blocks[i](x)
                if i in self.layers:
                    maps.append(x)
        return x, maps

    def shares_blocks_with(self, net: nn.Module) -> bool:
        """Whether ``net``'s first blocks are this extractor's, weights and buffers equal (a
        classifier whose linear head alone was fitted on the same frozen backbone): then
        one forward of ``net`` gives both the patch features and the logits."""
        blocks = getattr(net, "features", None)
        if not isinstance(blocks, nn.ModuleList | nn.Sequential) or len(blocks) < len(self.blocks):
            return False
        for mine, theirs in zip(self.blocks, blocks, strict=False):
            a, b = mine.state_dict(), theirs.state_dict()
            if type(mine) is not type(theirs) or a.keys() != b.keys():
                return False
            if any(a[k].dtype != b[k].dtype or a[k].shape != b[k].shape
                   or not torch.equal(a[k], b[k].to(a[k].device)) for k in a):
                return False
        return True

    def combine(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The patch features (N, D, h, w) float32 from the maps of the layers read: each
        averaged over ``pool`` x ``pool`` neighbourhoods, brought to the first one's grid,
        concatenated, then averaged over ``stride`` x ``stride`` cells."""
        size = maps[0].shape[-2:]
        out = []
        for m in maps:
            m = m.float()
            if self.pool > 1:
                m = F.avg_pool2d(m, self.pool, stride=1, padding=self.pool // 2,
                                 count_include_pad=False)
            if m.shape[-2:] != size:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            out.append(m)
        f = torch.cat(out, dim=1)
        if self.stride > 1:
            f = F.avg_pool2d(f, self.stride, ceil_mode=True)
        return f


class PatchBank(nn.Module):
    """Normal training patches (M, D) and each query patch's distance to the nearest of them.

    Parameters
    ----------
    features : Tensor (M, D), M >= 1, the bank (:func:`build_patch_bank`)
    extractor : PatchFeatures, the features the bank was built from (and queries go through)

    Raises
    ------
    ValueError
        ``features`` not an (M, D) tensor with M >= 1 (and, in :meth:`distances`, queries
        of another width D).
    """

    features: torch.Tensor
    centre: torch.Tensor
    centred: torch.Tensor
    sq_norms: torch.Tensor

    def __init__(self, features: torch.Tensor, extractor: PatchFeatures) -> None:
        super().__init__()
        if features.ndim != 2 or len(features) < 1:
            raise ValueError(f"a patch bank is an (M, D) tensor with M >= 1 rows, got shape "
                             f"{tuple(features.shape)}")
        self.extractor = extractor
        f = features.detach().float().contiguous()
        self.register_buffer("features", f)
        # the product's operands centred on the bank's mean: smaller norms, less cancellation
        centre = f.double().mean(dim=0).float()
        centred = f - centre
        self.register_buffer("centre", centre, persistent=False)
        self.register_buffer("centred", centred, persistent=False)
        self.register_buffer("sq_norms", centred.square().sum(dim=1), persistent=False)

    def distances(self, q: torch.Tensor) -> torch.Tensor:
        """Distance of each patch of q (N, D, h, w) to its nearest bank row: (N, h, w) float32.

        The nearest row is found with matrix products (centred on the bank's mean), and its
        distance is then measured exactly from the difference, so two ways of computing
        the products (torch's chunks, the ONNX graph's one product) give the same distances
        but where two rows are within rounding of each other."""
        n, d, h, w = q.shape
        if d != self.features.shape[1]:
            raise ValueError(f"query patches have {d} features but the bank {self.features.shape[1]}")
        flat = q.permute(0, 2, 3, 1).reshape(-1, d).float()
        with torch.autocast(q.device.type, enabled=False):
            qc = flat - self.centre  # ||q - b||^2 = ||qc||^2 + ||bc||^2 - 2 qc.bc: the
            # first term is the same for every b, so the nearest b minimises the rest
            if is_exporting():
                # one product over the whole bank: chunks would unroll into as many nodes
                idx = (self.sq_norms[None] - 2 * qc @ self.centred.T).argmin(dim=1)
            else:  # chunks of queries and of the bank: memory bounded at any batch and size
                idx = torch.cat([self._nearest(qc[j : j + _QUERY_CHUNK])
                                 for j in range(0, len(qc), _QUERY_CHUNK)])
            exact = (flat - self.features[idx]).square().sum(dim=1).sqrt()
        return exact.view(n, h, w)

    def _nearest(self, qc: torch.Tensor) -> torch.Tensor:
        """Index of the nearest bank row of each centred query (Q, D), by chunks of the bank."""
        best = torch.full((len(qc),), float("inf"), device=qc.device)
        idx = torch.zeros(len(qc), dtype=torch.long, device=qc.device)
        for i in range(0, len(self.features), _CHUNK):
            # ||bc||^2 - 2 qc.bc in one GEMM (the add folded in: one pass less over Q x chunk)
            part = torch.addmm(self.sq_norms[None, i : i + _CHUNK], qc,
                               self.centred[i : i + _CHUNK].T, alpha=-2)
            value, at = part.min(dim=1)
            better = value < best
            best = torch.where(better, value, best)
            idx = torch.where(better, at + i, idx)
        return idx

    def error_map(self, u: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The feature-space error e (N, 1, H, W) float32 >= 0 of u (N, C, H, W) in [0, 1]:
        patch distances upsampled (bilinear) to the image, 0 on letterbox padding."""
        return self.error_from_features(self.extractor(u), u.shape[-2:], valid)

    def error_from_features(self, f: torch.Tensor, size: Sequence[int],
                            valid: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`error_map` from the patch features f (N, D, h, w) already extracted: the
        distances upsampled (bilinear) to ``size`` (H, W), 0 on letterbox padding."""
        dist = self.distances(f)[:, None]
        e = F.interpolate(dist, size=tuple(size), mode="bilinear", align_corners=False)
        return e if valid is None else e * valid.to(e)


@torch.no_grad()
def build_patch_bank(
    extractor: PatchFeatures,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
    n_images: int,
    bank_size: int = 16384,
    seed: int = 0,
) -> PatchBank:
    """A :class:`PatchBank` of ``bank_size`` patches drawn uniformly (seeded) from normal images.

    Parameters
    ----------
    extractor : PatchFeatures
    batches : iterable of (u, valid): u (B, C, S, S) float in [0, 1], valid (B, 1, S, S) in
        {0, 1} or None; ``n_images`` images in all, every batch of one size S
    n_images : int >= 1
    bank_size : int >= 1
        Rows of the bank (all the patches when there are fewer).
    seed : int
        Seeds the draw (a local generator; the caller's RNG is untouched).

    Returns
    -------
    PatchBank with min(bank_size, patches on image pixels) rows, D = the extractor's width.

    Raises
    ------
    ValueError
        ``n_images`` or ``bank_size`` below 1, or batches holding other than ``n_images``.
    """
    if n_images < 1 or bank_size < 1:
        raise ValueError(f"n_images and bank_size must be >= 1, got {n_images}, {bank_size}")
    g = torch.Generator().manual_seed(int(seed))
    rows: list[torch.Tensor] = []
    seen = 0
    per_image: int | None = None
    keep: torch.Tensor | None = None
    for u, valid in batches:
        f = extractor(u.float())  # (B, D, h, w)
        b, d, h, w = f.shape
        if per_image is None:
            per_image = h * w
            total = n_images * per_image
            # which of all patches enter the bank: a seeded draw without replacement (patches
            # on padding drawn here are skipped below, so a letterboxed set may give fewer)
            keep = torch.zeros(total, dtype=torch.bool)
            keep[torch.randperm(total, generator=g)[: min(bank_size, total)]] = True
        assert keep is not None
        if seen + b > n_images:
            raise ValueError(f"the batches hold more than n_images={n_images} images")
        chosen = keep[seen * per_image : (seen + b) * per_image]
        patches = f.permute(0, 2, 3, 1).reshape(-1, d)
        if valid is not None:  # a patch mostly on letterbox padding never enters
            on_image = F.adaptive_avg_pool2d(valid.float(), (h, w)).reshape(-1) >= 0.5
            chosen = chosen & on_image
        rows.append(patches[chosen].cpu())
        seen += b
        tick(f"patch bank: features of {seen}/{n_images} normal images")
    if seen != n_images:
        raise ValueError(f"the batches held {seen} images, not n_images={n_images}")
    return PatchBank(torch.cat(rows), extractor)
