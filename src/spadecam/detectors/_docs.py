"""The parameter docs every detector shares, written once (four copies had drifted apart)."""

from __future__ import annotations

__all__ = ["COMMON_PARAMETERS_DOC", "with_common_parameters"]

#: The parameters every detector shares, documented once; each detector's docstring has
#: ``{common_parameters}`` where they go (:func:`with_common_parameters`).
COMMON_PARAMETERS_DOC = """    batch_size : int
        Images per scoring batch (default 256; training batches are ``*_train``'s).
    precision : {"auto", "32", "bf16"}
        Scoring precision: "auto" (default) is bf16 autocast where the device computes bf16
        natively (CPU with AMX or AVX512-BF16, CUDA with bf16), else fp32; "32" is exact fp32
        (:mod:`spadecam.precision`). bf16 moved SPADE's Noisy-MNIST AUROC by <= 0.005 (README).
    threshold_quantile : float in (0, 1]
        Quantile of normal scores used as ``threshold_`` (default 0.99) when no known anomaly
        is held out: of the held-out normals, or of the training normals when
        ``threshold_holdout`` is 0.
    threshold_holdout : float in [0, 1)
        Share of the normal (and of the known-anomaly) images split off with the training
        seed before training and used only to set ``threshold_`` (:func:`fit_threshold`:
        with held-out anomalies, the F1-max cut among those flagging no more held-out normals
        than the quantile of their scores does; else, or when none of them catches an
        anomaly, that quantile).
        Default 0.1, as ``spadecam train`` (:data:`spadecam.recipes.FIT_DEFAULTS`); 0 keeps
        every image for training and takes the quantile of the normal training scores, which
        runs low because the models have seen those images.
    image_size : int, optional
        Side of the square model input in pixels; images of any size are brought to it.
        None (default): the VAE config's ``image_size`` if set, else 224 with
        ``recipe="pretrained"``, else the longest image side seen by ``fit``. Must be at
        least the networks' minimum (:func:`spadecam.inputs.min_input_size`, 16 for the
        default VAE).
    resize : {"letterbox", "resize"}
        How an image of another size reaches the input: "letterbox" (default) keeps the
        aspect ratio and pads, the padding never counting in the score; "resize" stretches.
        Maps are returned at each image's own size either way (:mod:`spadecam.inputs`).
"""


def with_common_parameters(cls: type) -> type:
    """Class decorator: the shared parameter docs in place of ``{common_parameters}``."""
    cls.__doc__ = (cls.__doc__ or "").replace("    {common_parameters}\n", COMMON_PARAMETERS_DOC)
    return cls
