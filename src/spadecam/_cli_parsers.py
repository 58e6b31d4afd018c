"""The argument parsers of spadecam train / score / evaluate / reproduce and the option groups
every command shares (distributed, precision), for :mod:`spadecam.cli`. No torch import: the
defaults come from :mod:`spadecam.recipes`' tables."""

from __future__ import annotations

import argparse
from typing import Any

from spadecam.recipes import RECIPE_FIT

__all__ = ["add_distributed_options", "add_image_commands", "add_reproduce_command"]


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 1,3,5, got {text!r}"
        ) from None


def _known_digits(text: str) -> list[int]:
    """--known: distinct digits 1-9, checked at parse time (no torch import for a typo)."""
    digits = _int_list(text)
    if not digits or any(d < 1 or d > 9 for d in digits) or len(set(digits)) != len(digits):
        raise argparse.ArgumentTypeError(f"expected distinct digits in 1-9 like 1,3,5, got {text!r}")
    return digits


#: What --precision auto means, for every command's help (spadecam.precision).
_AUTO_PRECISION = ("auto = training in the faster of bf16-mixed and fp32 as timed on the model "
                   "where the CPU has AMX or AVX512-BF16 (kept per machine; trainings under "
                   "100 steps and several processes: bf16-mixed with AMX, else fp32), "
                   "bf16-mixed where the GPU has bf16, fp32 elsewhere; "
                   "scoring in bf16 where the CPU has AMX or AVX512-BF16 or the GPU bf16, "
                   "else fp32; 32 = exact fp32")


def add_distributed_options(p: argparse.ArgumentParser, precision: bool = True,
                             precision_default: str | None = "auto",
                             precision_note: str = "default auto") -> None:
    """Lightning Fabric settings; unset ones come from torchrun / `fabric run`, else 1 CPU."""
    g = p.add_argument_group(
        "distributed (Lightning Fabric; also under torchrun or `fabric run`, see "
        "docs/distributed.md)"
    )
    g.add_argument("--accelerator", choices=["cpu", "cuda", "auto"], default=None,
                   help="device type (default cpu, or that of `fabric run`)")
    g.add_argument("--devices", type=int, default=None, metavar="N",
                   help="processes (devices) per node (default 1, or as many as torchrun / "
                   "`fabric run` started); N > 1 without a launcher starts N - 1 more copies "
                   "of this command")
    g.add_argument("--strategy", choices=["auto", "ddp"], default=None,
                   help="auto: DDP when there is more than one process (default)")
    g.add_argument("--num-nodes", type=int, default=None, metavar="N",
                   help="machines taking part (default 1, or torchrun's)")
    if precision:
        g.add_argument("--precision", choices=["auto", "32", "bf16", "bf16-mixed", "16-mixed"],
                       default=precision_default,
                       help=f"training and scoring precision ({precision_note}): "
                       + _AUTO_PRECISION)


def _add_scoring_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=["auto", "32", "bf16"], default=None,
                   help="scoring precision: auto = bf16 autocast where the CPU or GPU computes "
                   "bf16 natively, else fp32; 32 = exact fp32; default: the one stored in the "
                   "model directory (what `spadecam train --precision` chose)")


_TRAIN_EXAMPLE = """\
example (three folders of PNGs):
  spadecam train --normal good/ --anomaly scratch/ --out model/
  spadecam score model/ new_images/ --out scores.csv --maps overlays/
  spadecam evaluate model/ --normal test/good --anomaly test/bad --masks test/masks \\
      --out metrics.json

Images: PNG, TIFF, JPEG or BMP; 8- or 16-bit grey (16-bit kept at full precision and
divided by 65535), RGB, RGBA (alpha dropped) or palette (grey palettes count as grey),
read as displayed (EXIF orientation applied), of any size. Each is brought to the model's
--image-size x --image-size input (by default the training images' longest side, at most
128, or 224 for the pretrained recipe; --resize letterbox, the default, keeps the aspect
ratio and pads with black that never counts; resize stretches); score and evaluate return
maps and overlays at each image's own size. The folders of train and evaluate are read without
recursion (a sub-folder never changes a label unseen); score reads folders recursively. Every
unreadable file is named in one error, and nothing is written then. A score exactly at
the threshold is normal: anomalous means score > threshold."""


def add_image_commands(sub) -> None:
    """train / score / evaluate on the user's own image folders (spadecam.workflow)."""
    _add_train(sub)
    _add_score(sub)
    _add_evaluate(sub)
    _add_export(sub)


def _add_train(sub) -> None:
    """`spadecam train`: its defaults are the API's, read from spadecam.recipes (torch-free)."""
    from spadecam.recipes import FIT_DEFAULTS as FIT
    from spadecam.recipes import RECIPE_DEFAULTS

    ours, paper = RECIPE_DEFAULTS["spadecam"], RECIPE_DEFAULTS["paper"]
    tr = sub.add_parser(
        "train",
        help="train SPADE on folders of normal and known-anomaly images",
        description=(
            "Train SPADE on your own images: a memory bank of the normal images' patch\n"
            "features (a frozen ImageNet EfficientNet-Lite0; with --recipe spadecam or paper,\n"
            "a VAE trained on them) gives the error map, a classifier separates them from\n"
            "the known anomalies, and a decision threshold is set on held-out images.\n"
            "Writes MODEL_DIR: safetensors weights and config.json."
        ),
        epilog=_TRAIN_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.add_argument("--normal", action="append", required=True, metavar="DIR",
                    help="folder of normal images (repeat for several folders)")
    tr.add_argument("--anomaly", action="append", required=True, metavar="DIR",
                    help="folder of known-anomaly images (repeat for several folders)")
    tr.add_argument("--out", required=True, metavar="MODEL_DIR",
                    help="model directory to write (new, empty, or an older model)")
    tr.add_argument("--detector", choices=["spade", "naive-spade", "vae", "cnn"],
                    default="spade",
                    help="spade (default), or a baseline of the paper from the same options, "
                    "to compare against on your images: naive-spade (e x ReLU Grad-CAM of the "
                    "input), vae (the reconstruction error alone) or cnn (the classifier's "
                    "likelihood; no per-pixel map)")
    _add_train_input_options(tr, FIT)
    _add_train_budget_options(tr, FIT, ours, paper)
    _add_train_scoring_options(tr, FIT, ours)
    tr.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_distributed_options(tr)


def _add_train_input_options(tr: argparse.ArgumentParser, fit: dict) -> None:
    """How images become model inputs, and the classifier backbone."""
    tr.add_argument("--image-size", type=int, default=None, metavar="N",
                    help="side of the square model input in pixels (default: the recipe's, "
                    f"pretrained {RECIPE_FIT['pretrained']['image_size']}; spadecam and paper: "
                    "the images' longest side, at most "
                    f"{fit['max_image_size']}, as SPADE() sizes them)")
    tr.add_argument("--channels", type=int, choices=[1, 3], default=None,
                    help="convert every image to 1 (grey) or 3 (colour) channels; default: "
                    "the images' own count, which must then be the same for all")
    tr.add_argument("--resize", choices=["resize", "letterbox"], default=fit["resize"],
                    help="letterbox: keep the aspect ratio and pad with black (the padding "
                    "never counts in the score); resize: stretch to the square (default "
                    f"{fit['resize']})")
    tr.add_argument("--backbone", choices=["small", "resnet18", "efficientnet_lite0",
                                           "wide_resnet50_2"],
                    default=None,
                    help="classifier (default: the recipe's, pretrained efficientnet_lite0; "
                    "spadecam and paper small): small, the paper's 3-conv layout with kernels "
                    "that follow --image-size under the spadecam recipe (7x7 at 128 px; "
                    "Grad-CAM grid = size / 8), resnet18, a ResNet-18 (needs --image-size "
                    ">= 32; Grad-CAM grid = size / 32), or efficientnet_lite0, EfficientNet-"
                    "Lite0 from its ImageNet weights (grey images as three channels; needs "
                    "--image-size >= 32; Grad-CAM grid = size / 32), or wide_resnet50_2 "
                    "(PatchCore's backbone; with --backbone-weights)")
    tr.add_argument("--backbone-weights", metavar="PATH",
                    help="a torchvision-format state dict file the resnet18 or "
                    "wide_resnet50_2 backbone starts from (e.g. resnet18-f37072fd.pth); "
                    "every key and shape is checked; images are then normalised with "
                    "ImageNet's mean and std")


def _add_train_budget_options(tr: argparse.ArgumentParser, fit: dict,
                              ours: dict, paper: dict) -> None:
    """Training length, seed, recipe, latent dimension and optimiser."""
    tr.add_argument("--steps", type=int, default=None,
                    help="budget of optimiser steps per model, with early stopping on a "
                    f"validation split (default {fit['steps']}, whatever the number of images)")
    tr.add_argument("--epochs", type=int, default=None,
                    help="train for this many epochs instead of a step budget")
    tr.add_argument("--seed", type=int, default=fit["seed"],
                    help=f"random seed (default {fit['seed']})")
    tr.add_argument("--recipe", choices=["pretrained", "spadecam", "paper"], default=None,
                    help="defaults for the options below: pretrained (the default for SPADE "
                    "and --detector cnn, chosen on ELPV's validation split: EfficientNet-Lite0 "
                    "from ImageNet as the classifier, its linear head fitted on the frozen "
                    "features; the feature-space error; the margin fusion; no VAE; 224 px), "
                    "spadecam (from scratch: 8-d latent VAE, the CNN's kernels from the image "
                    "size; the default for --detector vae and naive-spade) or paper (128-d "
                    "latent, 3x3 CNN, |u - u_hat|)")
    tr.add_argument("--latent-dim", type=int, default=None,
                    help="VAE latent dimension (default: the recipe's, spadecam "
                    f"{ours['latent_dim']}, paper {paper['latent_dim']})")
    tr.add_argument("--batch-size", type=int, default=fit["batch_size"],
                    help=f"training batch (default {fit['batch_size']})")
    tr.add_argument("--lr", type=float, default=fit["lr"],
                    help=f"learning rate of both models (AdamW, default {fit['lr']:g}); lower "
                    "it if training diverges")
    tr.add_argument("--head-only", action=argparse.BooleanOptionalAction, default=None,
                    help="train the classifier's linear head alone on its frozen pretrained "
                    "backbone (a class-balanced logistic regression; no optimiser steps), or "
                    "with --no-head-only the whole classifier (default: the recipe's, "
                    "pretrained the head alone on a backbone from ImageNet weights, else the "
                    "whole)")


def _add_train_scoring_options(tr: argparse.ArgumentParser, fit: dict,
                               ours: dict) -> None:
    """The reconstruction error, the ROI and the threshold."""
    from spadecam.recipes import RECIPE_DEFAULTS
    tr.add_argument("--error-smoothing", type=float, default=None, metavar="PIXELS",
                    help="Gaussian blur (sigma, pixels) of the residual u - u_hat before the "
                    "reconstruction error; 0 = the paper's (default: the recipe's, spadecam "
                    f"{ours['error_smoothing']:g}; the pretrained recipe has no VAE)")
    tr.add_argument("--error-norm", choices=["l1", "l2"], default=None,
                    help="reconstruction error |r| (l1, the paper's) or r^2 (l2; default: the "
                    f"recipe's, spadecam {ours['error_norm']}; the pretrained recipe has no VAE)")
    tr.add_argument("--classifier-weight", type=float, default=None, metavar="W",
                    help="multiply the weighted error by (1 + W p), p the classifier's "
                    "probability of the known anomaly, so the known kind counts in the score; "
                    f"0 = the paper's score (default: the recipe's, spadecam "
                    f"{ours['classifier_weight']:g}; pretrained 0, its margin fusion counts "
                    "the classifier instead)")
    tr.add_argument("--knn-power", type=float, default=None, metavar="G",
                    help="multiply the weighted error by d ** G, d the distance of the image's "
                    "classifier features to those of its 5 nearest normal training images (a "
                    "feature bank saved with the model; 1 = a typical normal); 0 = the paper's "
                    "score, no bank. Under the pretrained recipe's margin fusion G is instead "
                    "the weight of that distance's z-score beside the error maximum's "
                    f"(default: the recipe's, spadecam {ours['knn_power']:g}, pretrained "
                    f"{RECIPE_DEFAULTS['pretrained']['knn_power']:g})")
    tr.add_argument("--error", choices=["reconstruction", "feature"], default=None,
                    help="SPADE's error map: reconstruction, the VAE's |u - u_hat| (the "
                    "paper's), or feature, each patch's distance to the nearest normal training "
                    "patch in a frozen ImageNet EfficientNet-Lite0's features (a patch bank "
                    "saved with the model) (default: the recipe's, pretrained feature, spadecam "
                    f"and paper {ours['error']})")
    tr.add_argument("--roi-power", type=float, default=None, metavar="P",
                    help="sharpen the ROI: L ** P before L / |L| (1 = the paper's; default: "
                    f"the recipe's, {ours['roi_power']:g})")
    tr.add_argument("--cam-layer", type=int, default=fit["cam_layer"], metavar="K",
                    help="classifier layer whose Grad-CAM gives the ROI (default "
                    f"{fit['cam_layer']}, the last; -2 a finer, smaller ROI)")
    tr.add_argument("--threshold-holdout", type=float, default=fit["threshold_holdout"],
                    metavar="FRACTION",
                    help="share of normal and of known-anomaly images held out of training "
                    f"to set the threshold (default {fit['threshold_holdout']:g})")
    tr.add_argument("--threshold-quantile", type=float, default=fit["threshold_quantile"],
                    metavar="Q",
                    help="flag scores above this quantile of held-out normal scores "
                    f"(default {fit['threshold_quantile']:g}); with held-out known anomalies "
                    "the F1-max point among thresholds flagging no more held-out normals")


def _add_score(sub) -> None:
    sc = sub.add_parser(
        "score",
        help="score images with a trained model (CSV of path,score,label,map; overlays)",
        description=(
            "Score images with a model directory from `spadecam train` (or, with --onnx, a\n"
            "file from `spadecam export`, without torch). Prints or writes a CSV with columns\n"
            "path,score,label,map: score is the anomaly score (higher = more anomalous),\n"
            "label the decision (1 = anomalous: score > the model's threshold, 0 = normal),\n"
            "map the image's overlay under --maps (else empty). Folders are read\n"
            "recursively; overlays mirror the input paths under --maps."
        ),
        epilog=_TRAIN_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sc.add_argument("paths", nargs="+", metavar="[MODEL_DIR] INPUT",
                    help="the model directory from `spadecam train` (not with --onnx), then "
                    "image files and/or folders (read recursively)")
    sc.add_argument("--onnx", metavar="MODEL.onnx",
                    help="score with this file from `spadecam export` on onnxruntime, without "
                    "torch (fp32), instead of a model directory")
    sc.add_argument("--out", metavar="CSV", help="write the CSV here (default: print it)")
    sc.add_argument("--maps", metavar="DIR",
                    help="write one PNG per image: the model's map over the image (SPADE's "
                    "weighted reconstruction error e', the VAE-based e; brighter = more "
                    "anomalous), at DIR/<input path>.png")
    sc.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    _add_scoring_precision(sc)
    add_distributed_options(sc, precision=False)


def _add_export(sub) -> None:
    ex = sub.add_parser(
        "export",
        help="write a model directory as one ONNX graph, to score without torch",
        description=(
            "Write the whole detector of a model directory (VAE, classifier, Grad-CAM ROI,\n"
            "weighted error, score) as one ONNX graph: inputs images (N, C, S, S) float in\n"
            "[0, 1] and valid (N, 1, S, S), the letterbox mask; outputs score (N,) and\n"
            "anomaly_map (N, S, S); threshold and preprocessing in its metadata. Score it\n"
            "with `spadecam score --onnx MODEL.onnx INPUT...` or spadecam.deploy.OnnxSPADE\n"
            "(onnxruntime, no torch). Exporter: torch.onnx.export(dynamo=True), opset 20."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("model_dir", metavar="MODEL_DIR", help="model directory from `spadecam train`")
    ex.add_argument("--out", required=True, metavar="MODEL.onnx", help="the ONNX file to write")


def _add_evaluate(sub) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="image AUROC, average precision, F1-max (and pixel AUROC with masks) on "
        "labelled folders",
        description=(
            "Evaluate a model directory on labelled test folders: image AUROC, average\n"
            "precision (AP, the step-wise precision-recall summary that some tools call\n"
            "AUPR; key image_average_precision), F1-max with its threshold, and the\n"
            "precision/recall of the model's decisions (anomalous when score > threshold);\n"
            "pixel AUROC when --masks are given.\n"
            "Masks are matched to anomalous images by file stem (name.png or name_mask.png);\n"
            "any non-zero mask pixel is anomalous. An anomalous image without a mask is left\n"
            "out of pixel AUROC and named in a warning (pixel_auroc_missing_masks)."
        ),
        epilog=_TRAIN_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("model_dir", metavar="MODEL_DIR", help="model directory from `spadecam train`")
    ev.add_argument("--normal", action="append", metavar="DIR", help="folder of normal test images")
    ev.add_argument("--anomaly", action="append", metavar="DIR",
                    help="folder of anomalous test images (repeatable)")
    ev.add_argument("--masks", action="append", metavar="DIR",
                    help="ground-truth masks: one folder, or one per --anomaly folder in order")
    ev.add_argument("--mvtec", metavar="CATEGORY_DIR",
                    help="an MVTec AD category (uses its test/ and ground_truth/ folders) "
                    "instead of --normal/--anomaly/--masks")
    ev.add_argument("--out", metavar="JSON", help="write the metrics here (default: print them)")
    ev.add_argument("--report", metavar="HTML",
                    help="also write a self-contained HTML report: metrics, ROC and PR curves, "
                    "score histograms, the most anomalous images, false positives and "
                    "negatives with input | reconstruction | ROI | weighted error")
    _add_scoring_precision(ev)
    ev.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_distributed_options(ev, precision=False)


def add_reproduce_command(sub: Any) -> None:
    """``spadecam reproduce noisy-mnist | elpv`` and its options (the benchmark harness)."""
    rep = sub.add_parser(
        "reproduce",
        help="reproduce a benchmark of the paper",
        description="Reproduce a benchmark of the paper and print its table.",
    )
    rep.add_argument("benchmark", choices=["noisy-mnist", "elpv"],
                     help="noisy-mnist (the paper's Table I) or elpv (real solar-cell images; "
                     "needs pip install -e '.[benchmarks]')")
    rep.add_argument(
        "--known", type=_known_digits, default=None,
        help="known anomaly digits, comma-separated (default 1,3,5,7,9)",
    )
    rep.add_argument("--seeds", type=_int_list, default=[0], help="model seeds (default 0)")
    rep.add_argument(
        "--recipe", default=None, choices=["spadecam", "paper", "pretrained"],
        help="spadecam (8-d latent, larger CNN receptive field; the default for "
        "noisy-mnist), paper (the paper's architecture: 128-d latent, 3x3 CNN) or pretrained "
        "(ImageNet EfficientNet-Lite0 features, no VAE, with the one-class pretrained "
        "baseline; fp32, no figures; the default for elpv, as for SPADE() and spadecam "
        "train); see the README",
    )
    rep.add_argument(
        "--quick", action="store_true",
        help="smaller data slices and fewer epochs (a few minutes on 2 CPU cores)",
    )
    rep.add_argument(
        "--data-dir", default=None,
        help="folder with the MNIST IDX files (else $SPADECAM_DATA, ../shared/data/mnist, cache)",
    )
    rep.add_argument(
        "--download", action="store_true",
        help="download MNIST into the cache folder (sha256-checked) if no data folder is found",
    )
    rep.add_argument("--out", default=None,
                     help="output folder (default runs/noisy-mnist or runs/elpv)")
    rep.add_argument("--eval-split", choices=["test", "val"], default=None,
                     help="elpv: score the test split (the table) or the validation split "
                     "(for choosing settings)")
    rep.add_argument("--protocols", choices=["all", "ours", "dra"], default=None,
                     help="elpv: our protocols (unseen_type, few_labels), the field's (DRA: "
                     "general and hard settings with 1 or 10 labelled anomalies), or all "
                     "(default)")
    rep.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    rep.add_argument(
        "--ablations", action="store_true",
        help="also score SPADE without each of the paper's modifications (ablations.csv)",
    )
    rep.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    rep.add_argument("--report", metavar="HTML",
                     help="noisy-mnist: also write a self-contained HTML report of SPADE for the "
                     "first known digit and seed (results table, AUROC by digit, curves, "
                     "galleries with input | reconstruction | ROI | weighted error)")
    add_distributed_options(rep, precision_default=None, precision_note=(
        "default: noisy-mnist auto, elpv 32, as its table was measured"))
