"""SPADE on the user's own images: train, score and evaluate from folders.

These are the functions behind ``spadecam train``, ``spadecam score`` and
``spadecam evaluate``; the CLI only parses arguments and prints. Each function checks all
of its inputs (folders, every image, the model directory) before it writes anything, so a
bad input leaves no file behind, and every file it writes goes to a temp file first.

Preprocessing (stored in the model directory, reused by score and evaluate)
--------------------------------------------------------------------------
Images are read by :mod:`spadecam.data.images`: scaled to [0, 1] by their storage type's
maximum (8- or 16-bit), converted to ``channels`` (1 or 3; by default the images' own count,
which must then be the same for all) and brought to ``image_size`` x ``image_size`` by the
``resize`` policy ("letterbox", the default, keeps the aspect ratio and pads with black;
"resize" stretches). `spadecam score` and `evaluate` read each image at its own size and
let the detector bring it to the model input (:mod:`spadecam.inputs`), so maps and overlays
come back at the image's own size.

Thresholds
----------
``spadecam train`` and the detectors alike hold out ``threshold_holdout`` (default 10%,
:data:`spadecam.recipes.FIT_DEFAULTS`) of the normal and of the known-anomaly images;
``threshold_`` is the F1-max point on them among the thresholds that flag no more held-out
normals than their ``threshold_quantile`` (default 99th percentile) does, or that quantile
when no anomaly could be held out or none of those thresholds catches one (a warning says
so; :func:`spadecam.threshold.fit_threshold`).

Modules: ``_train`` (``build_detector``, ``train``), ``_score``, ``_evaluate``; scoring runs
through :class:`spadecam.deploy.TorchInferencer`.
"""

from spadecam.deploy.torch_inferencer import overlay
from spadecam.inputs import min_input_size
from spadecam.workflow._evaluate import evaluate
from spadecam.workflow._score import rows_to_csv, score
from spadecam.workflow._train import BACKBONES, build_detector, default_recipe, train

__all__ = [
    "BACKBONES",
    "build_detector",
    "default_recipe",
    "evaluate",
    "min_input_size",
    "overlay",
    "rows_to_csv",
    "score",
    "train",
]
