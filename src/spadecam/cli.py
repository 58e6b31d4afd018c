"""Command-line interface: a thin layer over the Python API.

    spadecam reproduce noisy-mnist [--known 1,3,5,7,9] [--seeds 0] [--quick] [--ablations]
    spadecam reproduce elpv [--seeds 0,1,2] [--quick] [--eval-split val]
                                   [--recipe paper|spadecam] [--data-dir D] [--out DIR]
    spadecam download [--cache-dir D]
    spadecam train --normal DIR --anomaly DIR [--anomaly DIR ...] --out MODEL_DIR [options]
    spadecam score MODEL_DIR INPUT... [--out scores.csv] [--maps DIR]
    spadecam score --onnx MODEL.onnx INPUT... [--out scores.csv] [--maps DIR]   (no torch)
    spadecam export MODEL_DIR --out MODEL.onnx
    spadecam evaluate MODEL_DIR --normal DIR --anomaly DIR [--masks DIR] [--out metrics.json]

train and reproduce also take --accelerator, --devices, --strategy, --num-nodes and
--precision, and score and evaluate the first four (Lightning Fabric; see
docs/distributed.md).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from spadecam._cli_parsers import add_image_commands, add_reproduce_command

__all__ = ["main"]


def _distributed(args: argparse.Namespace) -> dict:
    """Fabric settings given on the command line; --precision contributes its training part."""
    keys = ("accelerator", "devices", "strategy", "num_nodes")
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if getattr(args, "precision", None) is not None and args.command in ("train", "reproduce"):
        from spadecam.precision import from_option

        out["precision"] = from_option(args.precision)[0]
    return out


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spadecam",
        description="SPADE: Spatially-weighted Anomaly Detection (Narita et al., arXiv 1810.02607).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    add_reproduce_command(sub)

    dl = sub.add_parser(
        "download",
        help="download MNIST (sha256-checked) into the cache folder",
        description="Download the four MNIST IDX files and check their sha256.",
    )
    dl.add_argument("--cache-dir", default=None, help="target folder (default ~/.cache/spadecam/mnist)")
    add_image_commands(sub)
    return p


def _data_dir(args: argparse.Namespace) -> str | None:
    from spadecam.data import MNISTNotFoundError, download_mnist, resolve_data_dir

    try:
        return str(resolve_data_dir(args.data_dir))
    except MNISTNotFoundError:
        if args.download and args.data_dir is None:
            return str(download_mnist())
        raise


def _precision_line(args: argparse.Namespace) -> str:
    """What --precision resolves to here, e.g. "precision: training bf16-mixed, scoring bf16"."""
    from spadecam.distributed import training_precision_label
    from spadecam.precision import describe, from_option, resolve_scoring_precision

    option = args.precision  # train; score and evaluate say it once the model is loaded
    train, scoring = from_option(option)
    text = (f"training {training_precision_label(**_distributed(args))}, "
            f"scoring {resolve_scoring_precision(scoring)}")
    why = f" (auto: {describe()}; --precision 32 for exact fp32)" if option in ("auto", None) else ""
    return f"precision: {text}{why}"


def _run_image_command(args: argparse.Namespace) -> int:
    """Run train / score / evaluate / export; errors are printed by main (exit code 2).

    All or nothing: every file the command writes is taken back, the files it replaced put
    back and the folders it created removed, when it fails (a full disk: the error names
    the option and the file) or is interrupted (:func:`spadecam._fs.outputs`).
    """
    from spadecam._fs import outputs

    with outputs(*_named_outputs(args)):
        code, report = _image_command(args)
    report()  # after the block: a closed stdout (`| head`) cannot take back finished outputs
    return code


def _named_outputs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(option, path) of each output the command was given."""
    return [(f"--{dest}", getattr(args, dest, None)) for dest in ("out", "maps", "report")]


def _image_command(args: argparse.Namespace) -> tuple[int, Callable[[], None]]:
    """Run the command; returns (exit code, what prints its result once its outputs are in
    place)."""
    from spadecam import workflow
    from spadecam._json import json_text
    from spadecam.distributed import global_rank
    from spadecam.precision import from_option

    progress = not getattr(args, "no_progress", False)
    rank0 = global_rank() == 0

    def stderr(line: str) -> None:
        print(line, file=sys.stderr)

    if args.command == "train":
        if rank0:
            print(_precision_line(args), file=sys.stderr)
        # every train option by its API name, nothing renamed or defaulted here
        names = ("backbone", "backbone_weights", "epochs", "steps", "seed", "recipe", "resize",
                 "latent_dim", "batch_size", "lr", "threshold_quantile", "threshold_holdout",
                 "error_smoothing", "error_norm", "roi_power", "classifier_weight", "cam_layer",
                 "knn_power", "error", "detector", "head_only")
        from spadecam._progress import heartbeat

        with heartbeat():  # a line at least every 30 s, bars or not (--no-progress)
            workflow.train(  # prints its summary, ending with where the model went
                args.normal, args.anomaly, args.out, image_size=args.image_size,
                channels=args.channels, log=print, progress=progress,
                distributed=_distributed(args), precision=from_option(args.precision)[1],
                **{k: getattr(args, k) for k in names},
            )
    elif args.command == "export":
        from pathlib import Path

        from spadecam._fs import check_writable
        from spadecam._progress import warn
        from spadecam.deploy.onnx_export import export_onnx

        check_writable(args.out, "--out")  # before the export, not after it
        if Path(args.out).exists():
            warn(f"--out {args.out}: replacing the existing file")
        written = export_onnx(args.model_dir, args.out)
        return 0, lambda: print(f"wrote {written}")
    elif args.command == "score":
        rows = workflow.score(args.paths[0], args.paths[1:], args.out, args.maps, progress,
                              distributed=_distributed(args), precision=args.precision,
                              log=stderr if rank0 else None)
        if global_rank() != 0:
            return 0, _nothing  # rank 0 prints for every process
        return 0, lambda: _print_scored(args, rows)
    else:
        metrics = workflow.evaluate(
            args.model_dir, args.normal, args.anomaly, args.masks, args.mvtec, args.out,
            progress, precision=args.precision, distributed=_distributed(args),
            log=stderr if rank0 else None, report=args.report,
        )
        if global_rank() != 0:
            return 0, _nothing  # rank 0 prints for every process

        def report() -> None:
            if args.out is None:
                print(json_text(metrics), end="")
            else:
                print(f"image AUROC {metrics['image_auroc']:.4f}; wrote {args.out}")
            if args.report is not None:
                print(f"report in {args.report}")

        return 0, report
    return 0, _nothing


def _nothing() -> None:
    """Nothing more to print."""


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
            # every file is written to a temp file and renamed, and train / score / evaluate /
            # export take back what they had moved into place (spadecam._fs.outputs)
            print("spadecam: interrupted; no output was left half-written",
                  file=sys.stderr)
            return 130


#: Options of `reproduce` that one benchmark does not take, with the reason.
_NOT_FOR = {
    "elpv": {
        "known": "its known anomalies are the defect kinds of its protocols",
        "data_dir": "its images come from the elpv-dataset package",
        "download": "its images come from the elpv-dataset package",
        "no_figures": "it draws no figures",
        "report": "its report is not written yet; use `spadecam evaluate --report` on a "
                  "model directory",
    },
    "noisy-mnist": {"eval_split": "it always scores the MNIST test set (Table I)",
                    "protocols": "its protocols are the known digits (--known)"},
}


def _check_reproduce_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse an option the chosen benchmark would ignore (exit 2, before any work); then
    apply the defaults of the options left unset."""
    for dest, why in _NOT_FOR[args.benchmark].items():
        if getattr(args, dest, None) not in (None, False):
            parser.error(f"reproduce {args.benchmark} does not take --{dest.replace('_', '-')}: "
                         f"{why}")
    args.recipe = args.recipe or ("pretrained" if args.benchmark == "elpv" else "spadecam")
    if args.recipe == "pretrained":
        taken = [f"--{d.replace('_', '-')}" for d in ("ablations", "report", "precision",
                                                      "accelerator", "devices", "strategy",
                                                      "num_nodes")
                 if getattr(args, d, None) not in (None, False)]
        if taken:
            parser.error(f"reproduce --recipe pretrained does not take {', '.join(taken)}: it "
                         "runs in fp32 in one process and has no VAE to ablate or show")
    args.known = args.known or [1, 3, 5, 7, 9]
    args.eval_split = args.eval_split or "test"
    args.protocols = args.protocols or "all"


def _check_score_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """score takes MODEL_DIR INPUT..., or --onnx MODEL.onnx INPUT... without torch's options."""
    if args.onnx is None and len(args.paths) < 2:
        parser.error("score needs MODEL_DIR and at least one INPUT (or --onnx MODEL.onnx "
                     "INPUT...)")
    if args.onnx is not None:
        torch_only = [f"--{k.replace('_', '-')}" for k in
                      ("precision", "accelerator", "devices", "strategy", "num_nodes")
                      if getattr(args, k, None) is not None]
        if torch_only:
            parser.error(f"score --onnx runs the graph on onnxruntime in fp32, one process; it "
                         f"does not take {', '.join(torch_only)}")


def _score_onnx(args: argparse.Namespace) -> int:
    """`spadecam score --onnx`: onnxruntime, numpy and Pillow; torch is never imported."""
    from spadecam._fs import outputs
    from spadecam.deploy.onnx_inferencer import score_onnx

    try:
        with outputs(*_named_outputs(args)):  # all or nothing, as with torch
            rows = score_onnx(args.onnx, args.paths, args.out, args.maps,
                              log=lambda line: print(line, file=sys.stderr))
        _print_scored(args, rows)  # after the block: a closed stdout takes nothing back
    except (ValueError, OSError, ImportError) as exc:
        print(f"spadecam: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _print_scored(args: argparse.Namespace, rows: list) -> None:
    """The CSV (without --out) or a summary line, and where the overlays went."""
    from spadecam.deploy.outputs import rows_to_csv

    if args.out is None:
        print(rows_to_csv(rows), end="")
    else:
        flagged = sum(r["label"] for r in rows)
        print(f"scored {len(rows)} images, {flagged} flagged anomalous (score > the "
              f"model's threshold); wrote {args.out}")
    if args.maps is not None:
        print(f"overlays in {args.maps}")


def _main(argv: Sequence[str] | None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "reproduce":
        _check_reproduce_options(parser, args)
    if args.command == "score":
        _check_score_options(parser, args)
        if args.onnx is not None:  # before anything imports torch
            return _score_onnx(args)
    from spadecam._runtime import tune_malloc

    tune_malloc()
    import torch

    from spadecam.data import MNISTDownloadError, MNISTFormatError, MNISTNotFoundError

    try:
        if args.command in ("train", "score", "evaluate", "export"):
            return _run_image_command(args)
        return _run_data_command(args, torch)
    except (
        MNISTNotFoundError, MNISTFormatError, MNISTDownloadError, ValueError, OSError,
        ModuleNotFoundError,
    ) as exc:
        print(f"spadecam: error: {exc}", file=sys.stderr)
        return 2


def _run_data_command(args: argparse.Namespace, torch: Any) -> int:
    """download / reproduce. What they wrote stays when they fail (a long benchmark keeps its
    finished parts); a failed write names the option and the file."""
    from spadecam._fs import outputs

    named = ([("--cache-dir", args.cache_dir)] if args.command == "download" else
             [("--out", args.out or f"runs/{args.benchmark}"), ("--report", args.report)])
    with outputs(*named, undo=False):
        return _data_command(args, torch)


def _data_command(args: argparse.Namespace, torch: Any) -> int:
    if args.command == "download":
        from spadecam.data import download_mnist

        path = download_mnist(args.cache_dir)
        print(f"MNIST ready in {path}")
        return 0
    if args.command == "reproduce":  # the output folder checked before any work
        from spadecam._fs import check_writable

        check_writable(args.out or f"runs/{args.benchmark}", "--out", folder=True)
        if args.report is not None:
            check_writable(args.report, "--report")
    if args.command == "reproduce" and args.benchmark == "elpv":
        from spadecam.bench.elpv import run_elpv

        run_elpv(seeds=args.seeds, recipe=args.recipe, quick=args.quick,
                 eval_split=args.eval_split, out_dir=args.out or "runs/elpv",
                 protocols=args.protocols,
                 progress=not args.no_progress, ablations=args.ablations,
                 precision=args.precision, distributed=_distributed(args))
        return 0
    if args.command == "reproduce":
        from spadecam.bench.reproduce import run_noisy_mnist

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
            report=args.report,
        )
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
