"""Command-line interface: a thin layer over the Python API.

    spadecam reproduce noisy-mnist [--known 1,3,5,7,9] [--seeds 0] [--quick] [--data-dir D] [--out DIR]
    spadecam download [--cache-dir D]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 1,3,5, got {text!r}"
        ) from None


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
    rep.add_argument("benchmark", choices=["noisy-mnist"], help="benchmark to run")
    rep.add_argument(
        "--known", type=_int_list, default=[1, 3, 5, 7, 9],
        help="known anomaly digits, comma-separated (default 1,3,5,7,9)",
    )
    rep.add_argument("--seeds", type=_int_list, default=[0], help="model seeds (default 0)")
    rep.add_argument("--recipe", default="paper", help="training recipe (default: paper)")
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
    rep.add_argument("--out", default="runs/noisy-mnist", help="output folder (default runs/noisy-mnist)")
    rep.add_argument("--no-progress", action="store_true", help="hide the progress bars")

    dl = sub.add_parser(
        "download",
        help="download MNIST (sha256-checked) into the cache folder",
        description="Download the four MNIST IDX files and check their sha256.",
    )
    dl.add_argument("--cache-dir", default=None, help="target folder (default ~/.cache/spadecam/mnist)")
    return p


def _data_dir(args: argparse.Namespace) -> str | None:
    from spadecam.data import MNISTNotFoundError, download_mnist, resolve_data_dir

    try:
        return str(resolve_data_dir(args.data_dir))
    except MNISTNotFoundError:
        if args.download and args.data_dir is None:
            return str(download_mnist())
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spadecam`` console script. Returns the exit code."""
    args = _build_parser().parse_args(argv)
    import torch

    from spadecam.data import MNISTDownloadError, MNISTFormatError, MNISTNotFoundError

    try:
        if args.command == "download":
            from spadecam.data import download_mnist

            path = download_mnist(args.cache_dir)
            print(f"MNIST ready in {path}")
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
                out_dir=args.out,
                progress=not args.no_progress,
            )
            return 0
    except (MNISTNotFoundError, MNISTFormatError, MNISTDownloadError, ValueError) as exc:
        print(f"spadecam: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
