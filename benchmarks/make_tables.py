"""Regenerate the README's result tables from the committed CSV files.

    python benchmarks/make_tables.py            # rewrites README.md between the markers
    python benchmarks/make_tables.py --print    # prints the tables only

Reads benchmarks/results/noisy_mnist.csv (columns method,known_class,seed,auroc,recipe) and
benchmarks/results/ablations.csv, and writes one Table-I-style table per recipe (mean ± sd over
seeds beside the paper's figures) and the ablation table, between the markers
``<!-- tables:begin -->`` and ``<!-- tables:end -->`` in README.md.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from spadecam.evaluation import atomic_write_text, format_table, read_results_csv
from spadecam.reproduce import ABLATION_LABELS, ABLATIONS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"


def tables() -> str:
    rows = read_results_csv(RESULTS / "noisy_mnist.csv")
    by_recipe: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_recipe[r.get("recipe", "")].append(r)
    parts = []
    for recipe, rs in by_recipe.items():
        seeds = sorted({int(r["seed"]) for r in rs})
        parts.append(
            f"**Recipe `{recipe}`** — AUROC on the 10,000 Noisy-MNIST test images, mean ± sd over "
            f"seeds {seeds}; rows marked (paper) are Table I of the paper.\n\n" + format_table(rs)
        )
    abl = RESULTS / "ablations.csv"
    if abl.exists():
        rs = read_results_csv(abl)
        recipe = rs[0].get("recipe", "")
        seeds = sorted({int(r["seed"]) for r in rs})
        parts.append(
            f"**Ablations** (recipe `{recipe}`, seeds {seeds}; every variant scored on the same "
            "trained models)\n\n"
            + format_table(rs, methods=("spade", *ABLATIONS, "spade_bf16"), paper=None,
                           labels=ABLATION_LABELS)
        )
    return "\n".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--print", action="store_true", help="print instead of rewriting README.md")
    args = p.parse_args()
    text = tables()
    if args.print:
        print(text)
        return
    readme = ROOT / "README.md"
    src = readme.read_text()
    if BEGIN not in src or END not in src:
        raise SystemExit(f"{readme}: markers {BEGIN} / {END} not found")
    head, rest = src.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(readme, f"{head}{BEGIN}\n{text}\n{END}{tail}")
    print(f"rewrote the tables in {readme}")


if __name__ == "__main__":
    main()
