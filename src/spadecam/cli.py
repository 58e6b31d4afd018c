"""Command-line interface: a thin layer over the Python API.

    spadecam reproduce noisy-mnist [--known 1,3,5,7,9] [--seeds 0] [--quick] [--ablations]
    spadecam reproduce elpv [--seeds 0,1,2] [--quick] [--eval-split val]
                                   [--recipe paper|spadecam] [--data-dir D] [--out DIR]
    spadecam download [--cache-dir D]
    spadecam train --normal DIR --anomaly DIR [--anomaly DIR ...] --out MODEL_DIR [options]
    spadecam score MODEL_DIR INPUT... [--out scores.csv] [--maps DIR]
    spadecam evaluate MODEL_DIR --normal DIR --anomaly DIR [--masks DIR] [--out metrics.json]

train and reproduce also take --accelerator, --devices, --strategy, --num-nodes and
--precision, and score and evaluate the first four (Lightning Fabric; see
docs/distributed.md).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

__all__ = ["main"]


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
_AUTO_PRECISION = ("auto = training in bf16-mixed where the CPU has AMX or the GPU bf16 (on "
                   "AVX512-BF16 without AMX bf16 training measured slower: fp32 there), "
                   "scoring in bf16 where the CPU has AMX or AVX512-BF16 or the GPU bf16, "
                   "else fp32; 32 = exact fp32")


def _add_distributed_options(p: argparse.ArgumentParser, precision: bool = True,
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


def _distributed(args: argparse.Namespace) -> dict:
    """Fabric settings given on the command line; --precision contributes its training part."""
    keys = ("accelerator", "devices", "strategy", "num_nodes")
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if getattr(args, "precision", None) is not None and args.command in ("train", "reproduce"):
        from spadecam.precision import from_option

        out["precision"] = from_option(args.precision)[0]
    return out


def _add_scoring_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=["auto", "32", "bf16"], default=None,
                   help="scoring precision: auto = bf16 autocast where the CPU or GPU computes "
                   "bf16 natively, else fp32; 32 = exact fp32; default: the one stored in the "
                   "model directory (what `spadecam train --precision` chose)")


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spadecam",
        description="SPADE: Spatially-weighted Anomaly Detection (Narita et al., arXiv 1810.02607).",
    )
    sub = p.add_subparsers(dest="command", required=True)

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
        "--recipe", default="spadecam", choices=["spadecam", "paper"],
        help="spadecam (default: 8-d latent, larger CNN receptive field) or paper (the paper's "
        "architecture: 128-d latent, 3x3 CNN); see the README",
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
    rep.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    rep.add_argument(
        "--ablations", action="store_true",
        help="also score SPADE without each of the paper's modifications (ablations.csv)",
    )
    rep.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    _add_distributed_options(rep, precision_default=None, precision_note=(
        "default: noisy-mnist auto, elpv 32, as its table was measured"))

    dl = sub.add_parser(
        "download",
        help="download MNIST (sha256-checked) into the cache folder",
        description="Download the four MNIST IDX files and check their sha256.",
    )
    dl.add_argument("--cache-dir", default=None, help="target folder (default ~/.cache/spadecam/mnist)")
    _add_image_commands(sub)
    return p


def _data_dir(args: argparse.Namespace) -> str | None:
    from spadecam.data import MNISTNotFoundError, download_mnist, resolve_data_dir

    try:
        return str(resolve_data_dir(args.data_dir))
    except MNISTNotFoundError:
        if args.download and args.data_dir is None:
            return str(download_mnist())
        raise


_TRAIN_EXAMPLE = """\
example (three folders of PNGs):
  spadecam train --normal good/ --anomaly scratch/ --out model/
  spadecam score model/ new_images/ --out scores.csv --maps overlays/
  spadecam evaluate model/ --normal test/good --anomaly test/bad --masks test/masks \\
      --out metrics.json

Images: PNG, TIFF, JPEG or BMP; 8- or 16-bit grey (16-bit kept at full precision and
divided by 65535), RGB, RGBA (alpha dropped) or palette (grey palettes count as grey),
read as displayed (EXIF orientation applied), of any size. Each is brought to the model's
--image-size x --image-size input (--resize letterbox, the default, keeps the aspect ratio
and pads with black that never counts; resize stretches); score and evaluate return maps and
overlays at each image's own size. The folders of train and evaluate are read without
recursion (a sub-folder never changes a label unseen); score reads folders recursively. Every
unreadable file is named in one error, and nothing is written then. A score exactly at
the threshold is normal: anomalous means score > threshold."""


def _add_image_commands(sub) -> None:
    """train / score / evaluate on the user's own image folders (spadecam.workflow)."""
    _add_train(sub)
    _add_score(sub)
    _add_evaluate(sub)


def _add_train(sub) -> None:
    """`spadecam train`: its defaults are the API's, read from spadecam.recipes (torch-free)."""
    from spadecam.recipes import FIT_DEFAULTS as FIT
    from spadecam.recipes import RECIPE_DEFAULTS

    ours, paper = RECIPE_DEFAULTS["spadecam"], RECIPE_DEFAULTS["paper"]
    tr = sub.add_parser(
        "train",
        help="train SPADE on folders of normal and known-anomaly images",
        description=(
            "Train SPADE on your own images: a VAE learns the normal images, a classifier\n"
            "separates them from the known anomalies, and a decision threshold is set on\n"
            "held-out images. Writes MODEL_DIR: safetensors weights and config.json."
        ),
        epilog=_TRAIN_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.add_argument("--normal", action="append", required=True, metavar="DIR",
                    help="folder of normal images (repeat for several folders)")
    tr.add_argument("--anomaly", action="append", required=True, metavar="DIR",
                    help="folder of known-anomaly images (repeat for several folders)")
    tr.add_argument("--out", required=True, metavar="MODEL_DIR",
                    help="model directory to write (new, empty, or an older model)")
    _add_train_input_options(tr, FIT)
    _add_train_budget_options(tr, FIT, ours, paper)
    _add_train_scoring_options(tr, FIT, ours)
    tr.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    _add_distributed_options(tr)


def _add_train_input_options(tr: argparse.ArgumentParser, fit: dict) -> None:
    """How images become model inputs, and the classifier backbone."""
    tr.add_argument("--image-size", type=int, default=fit["image_size"], metavar="N",
                    help="side of the square model input in pixels (default "
                    f"{fit['image_size']})")
    tr.add_argument("--channels", type=int, choices=[1, 3], default=None,
                    help="convert every image to 1 (grey) or 3 (colour) channels; default: "
                    "the images' own count, which must then be the same for all")
    tr.add_argument("--resize", choices=["resize", "letterbox"], default=fit["resize"],
                    help="letterbox: keep the aspect ratio and pad with black (the padding "
                    "never counts in the score); resize: stretch to the square (default "
                    f"{fit['resize']})")
    tr.add_argument("--backbone", choices=["small", "resnet18"], default="small",
                    help="classifier: small (default), the paper's 3-conv layout with kernels "
                    "that follow --image-size under the spadecam recipe (7x7 at 128 px; "
                    "Grad-CAM grid = size / 8), or resnet18, a ResNet-18 (needs --image-size "
                    ">= 32; Grad-CAM grid = size / 32)")


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
    tr.add_argument("--recipe", choices=["spadecam", "paper"], default="spadecam",
                    help="defaults for the options below: spadecam (default; chosen on "
                    "Noisy-MNIST seed-0 numbers and ELPV's validation split, docs/elpv.md "
                    "'Defaults') or paper (128-d latent, 3x3 CNN, |u - u_hat|)")
    tr.add_argument("--latent-dim", type=int, default=None,
                    help="VAE latent dimension (default: the recipe's, spadecam "
                    f"{ours['latent_dim']}, paper {paper['latent_dim']})")
    tr.add_argument("--batch-size", type=int, default=fit["batch_size"],
                    help=f"training batch (default {fit['batch_size']})")
    tr.add_argument("--lr", type=float, default=fit["lr"],
                    help=f"learning rate of both models (AdamW, default {fit['lr']:g}); lower "
                    "it if training diverges")


def _add_train_scoring_options(tr: argparse.ArgumentParser, fit: dict,
                               ours: dict) -> None:
    """The reconstruction error, the ROI and the threshold."""
    tr.add_argument("--error-smoothing", type=float, default=None, metavar="PIXELS",
                    help="Gaussian blur (sigma, pixels) of the residual u - u_hat before the "
                    "reconstruction error; 0 = the paper's (default: the recipe's, spadecam "
                    f"{ours['error_smoothing']:g})")
    tr.add_argument("--error-norm", choices=["l1", "l2"], default=None,
                    help="reconstruction error |r| (l1, the paper's) or r^2 (l2; default: the "
                    f"recipe's, spadecam {ours['error_norm']})")
    tr.add_argument("--classifier-weight", type=float, default=None, metavar="W",
                    help="multiply the weighted error by (1 + W p), p the classifier's "
                    "probability of the known anomaly, so the known kind counts in the score; "
                    f"0 = the paper's score (default: the recipe's, {ours['classifier_weight']:g})")
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
                    help="with no held-out anomaly: flag scores above this quantile of "
                    f"held-out normal scores (default {fit['threshold_quantile']:g}); else the "
                    "F1-max point is used")


def _add_score(sub) -> None:
    sc = sub.add_parser(
        "score",
        help="score images with a trained model (CSV of path,score,label,map; overlays)",
        description=(
            "Score images with a model directory from `spadecam train`. Prints or writes a\n"
            "CSV with columns path,score,label,map: score is SPADE's anomaly score (higher =\n"
            "more anomalous), label the decision (1 = anomalous: score > the model's\n"
            "threshold, 0 = normal), map the image's overlay under --maps (else empty).\n"
            "Folders are read recursively; overlays mirror the input paths under --maps."
        ),
        epilog=_TRAIN_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sc.add_argument("model_dir", metavar="MODEL_DIR", help="model directory from `spadecam train`")
    sc.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="image files and/or folders (read recursively)")
    sc.add_argument("--out", metavar="CSV", help="write the CSV here (default: print it)")
    sc.add_argument("--maps", metavar="DIR",
                    help="write one PNG per image: the weighted reconstruction error over the "
                    "image (brighter = more anomalous), at DIR/<input path>.png")
    sc.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    _add_scoring_precision(sc)
    _add_distributed_options(sc, precision=False)


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
    _add_scoring_precision(ev)
    ev.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    _add_distributed_options(ev, precision=False)


def _precision_line(args: argparse.Namespace) -> str:
    """What --precision resolves to here, e.g. "precision: training bf16-mixed, scoring bf16"."""
    from spadecam.distributed import fabric_settings
    from spadecam.precision import describe, from_option, resolve_scoring_precision

    option = args.precision  # train / reproduce; score and evaluate say it once loaded
    train, scoring = from_option(option)
    text = f"scoring {resolve_scoring_precision(scoring)}"
    if args.command in ("train", "reproduce"):
        text = f"training {fabric_settings(**_distributed(args))['precision']}, " + text
    why = f" (auto: {describe()}; --precision 32 for exact fp32)" if option in ("auto", None) else ""
    return f"precision: {text}{why}"


def _run_image_command(args: argparse.Namespace) -> int:
    """Run train / score / evaluate; errors are printed by main (exit code 2)."""
    from spadecam import workflow
    from spadecam._fs import json_text
    from spadecam.distributed import global_rank
    from spadecam.precision import from_option

    progress = not args.no_progress
    rank0 = global_rank() == 0

    def stderr(line: str) -> None:
        print(line, file=sys.stderr)

    if args.command == "train":
        if rank0:
            print(_precision_line(args), file=sys.stderr)
        # every train option by its API name, nothing renamed or defaulted here
        names = ("backbone", "epochs", "steps", "seed", "recipe", "resize", "latent_dim",
                 "batch_size", "lr", "threshold_quantile", "threshold_holdout",
                 "error_smoothing", "error_norm", "roi_power", "classifier_weight", "cam_layer")
        workflow.train(  # prints its summary, ending with where the model went
            args.normal, args.anomaly, args.out, image_size=args.image_size,
            channels=args.channels, log=print, progress=progress,
            distributed=_distributed(args), precision=from_option(args.precision)[1],
            **{k: getattr(args, k) for k in names},
        )
    elif args.command == "score":
        rows = workflow.score(args.model_dir, args.inputs, args.out, args.maps, progress,
                              distributed=_distributed(args), precision=args.precision,
                              log=stderr if rank0 else None)
        if global_rank() != 0:
            return 0  # rank 0 prints for every process
        flagged = sum(r["label"] for r in rows)
        if args.out is None:
            print(workflow.rows_to_csv(rows), end="")
        else:
            print(f"scored {len(rows)} images, {flagged} flagged anomalous (score > the "
                  f"model's threshold); wrote {args.out}")
        if args.maps is not None:
            print(f"overlays in {args.maps}")
    else:
        metrics = workflow.evaluate(
            args.model_dir, args.normal, args.anomaly, args.masks, args.mvtec, args.out,
            progress, precision=args.precision, distributed=_distributed(args),
            log=stderr if rank0 else None,
        )
        if global_rank() != 0:
            return 0  # rank 0 prints for every process
        if args.out is None:
            print(json_text(metrics), end="")
        else:
            print(f"image AUROC {metrics['image_auroc']:.4f}; wrote {args.out}")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings meant for the user as ``spadecam: warning: ...``; others as Python prints them."""
    from spadecam._progress import SpadecamWarning

    if issubclass(category, SpadecamWarning):
        print(f"spadecam: warning: {message}", file=sys.stderr, flush=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spadecam`` console script. Returns the exit code."""
    from spadecam._progress import SpadecamWarning

    with warnings.catch_warnings():  # the caller's warning settings come back afterwards
        warnings.showwarning = _show_warning
        warnings.simplefilter("always", SpadecamWarning)  # each run says everything once
        try:
            return _main(argv)
        except KeyboardInterrupt:
            # every output is written to a temp file and renamed, the CSV after its overlays:
            # what an interrupted command had not finished is simply not there
            print("spadecam: interrupted; outputs not yet written were not written",
                  file=sys.stderr)
            return 130


#: Options of `reproduce` that one benchmark does not take, with the reason.
_NOT_FOR = {
    "elpv": {
        "known": "its known anomalies are the defect kinds of its protocols",
        "data_dir": "its images come from the elpv-dataset package",
        "download": "its images come from the elpv-dataset package",
        "no_figures": "it draws no figures",
    },
    "noisy-mnist": {"eval_split": "it always scores the MNIST test set (Table I)"},
}


def _check_reproduce_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse an option the chosen benchmark would ignore (exit 2, before any work); then
    apply the defaults of the options left unset."""
    for dest, why in _NOT_FOR[args.benchmark].items():
        if getattr(args, dest, None) not in (None, False):
            parser.error(f"reproduce {args.benchmark} does not take --{dest.replace('_', '-')}: "
                         f"{why}")
    args.known = args.known or [1, 3, 5, 7, 9]
    args.eval_split = args.eval_split or "test"


def _main(argv: Sequence[str] | None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "reproduce":
        _check_reproduce_options(parser, args)
    from spadecam._runtime import tune_malloc

    tune_malloc()
    import torch

    from spadecam.data import MNISTDownloadError, MNISTFormatError, MNISTNotFoundError

    try:
        if args.command in ("train", "score", "evaluate"):
            return _run_image_command(args)
        if args.command == "download":
            from spadecam.data import download_mnist

            path = download_mnist(args.cache_dir)
            print(f"MNIST ready in {path}")
            return 0
        if args.command == "reproduce":  # the output folder checked before any work
            from spadecam._fs import check_writable

            check_writable(args.out or f"runs/{args.benchmark}", "--out", folder=True)
        if args.command == "reproduce" and args.benchmark == "elpv":
            from spadecam.reproduce import run_elpv

            run_elpv(seeds=args.seeds, recipe=args.recipe, quick=args.quick,
                     eval_split=args.eval_split, out_dir=args.out or "runs/elpv",
                     progress=not args.no_progress, ablations=args.ablations,
                     precision=args.precision, distributed=_distributed(args))
            return 0
        if args.command == "reproduce":
            from spadecam.reproduce import run_noisy_mnist

            torch.set_num_threads(max(1, torch.get_num_threads()))
            run_noisy_mnist(
                known=args.known,
                seeds=args.seeds,
                recipe=args.recipe,
                quick=args.quick,
                data_dir=_data_dir(args),
                out_dir=args.out or "runs/noisy-mnist",
                progress=not args.no_progress,
                ablations=args.ablations,
                figures=not args.no_figures,
                distributed=_distributed(args),
                precision=args.precision or "auto",
            )
            return 0
    except (
        MNISTNotFoundError, MNISTFormatError, MNISTDownloadError, ValueError, OSError,
        ModuleNotFoundError,
    ) as exc:
        print(f"spadecam: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
