"""Regenerate the result tables in the README and docs/ from the committed CSV files.

    python benchmarks/make_tables.py            # rewrites every marked block (make tables)
    python benchmarks/make_tables.py --print    # prints the blocks only

Each block lives between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in whichever
Markdown file holds it (README.md or docs/*.md):

* ``tables`` (docs/noisy-mnist.md), from benchmarks/results/noisy_mnist.csv (method,
  known_class,seed,auroc,recipe,train_precision,score_precision) and ablations.csv: one
  Table-I-style table per recipe (mean ± sd over seeds beside the paper's figures), the
  target check and the ablation table;
* ``noisy-mnist-headline`` (README.md): the table of the recipe with the most seeds;
* ``elpv`` (docs/elpv.md), from benchmarks/results/elpv.csv (method,protocol,subset,seed,auroc,
  aupr,recipe): the ELPV table and its goal check; ``elpv-headline`` (README.md): the table;
  ``elpv-dra`` (docs/elpv.md), from benchmarks/results/elpv_dra.csv: the field's protocol (DRA)
  beside the published figures;
* ``train-options`` (docs/own-images.md): every ``spadecam train`` option with its default and
  help, read from the argparse definitions; ``defaults`` (docs/python-api.md): the recipe table
  (:data:`spadecam.recipes.FIT_DEFAULTS`, :data:`~spadecam.recipes.RECIPE_DEFAULTS`) with the
  CLI option and API argument of each entry. tests/test_docs.py fails when a block is stale.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from spadecam.bench.elpv import ELPV_ABLATIONS, ELPV_LABELS, ELPV_METHODS
from spadecam.bench.pretrained import PRETRAINED_LABELS, PRETRAINED_METHODS
from spadecam.bench.protocols import ELPV_COLUMNS
from spadecam.bench.reproduce import ABLATION_LABELS, ABLATIONS
from spadecam.bench.tables import (
    METHODS,
    atomic_write_text,
    format_columns_table,
    format_table,
    read_results_csv,
    summarise,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: Markdown files that may hold marked blocks.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


#: Issue target: SPADE's 3-seed mean AUROC at or above the best figure of any method in the
#: paper's Table I, per known class.
TARGETS = {1: 0.85, 3: 0.88, 5: 0.96, 7: 0.88, 9: 0.96}


def target_table(rows: list[dict], recipe: str) -> str:
    stats = summarise(r for r in rows if r.get("recipe", "") == recipe)
    lines = [
        f"**Target check** (recipe `{recipe}`): SPADE mean AUROC vs the best paper figure per column",
        "",
        "| known class | target | SPADE (ours) | verdict |",
        "|---|---|---|---|",
    ]
    for k, t in TARGETS.items():
        if ("spade", k) not in stats:
            continue
        mean, sd, n = stats[("spade", k)]
        verdict = "met" if mean >= t else f"**missed by {t - mean:.3f}**"
        lines.append(f"| {k} | {t:.2f} | {mean:.3f} ± {sd:.3f} (n={n}) | {verdict} |")
    return "\n".join(lines) + "\n"


def _noisy_mnist_by_recipe() -> tuple[dict[str, list[dict]], list[dict]]:
    """noisy_mnist.csv's rows by recipe, the "pretrained" recipe's apart: its rows (the
    one-class pretrained baseline among them) are shown in the from-scratch recipe's table."""
    by_recipe: dict[str, list[dict]] = defaultdict(list)
    for r in read_results_csv(RESULTS / "noisy_mnist.csv"):
        by_recipe[r.get("recipe", "")].append(r)
    return by_recipe, by_recipe.pop("pretrained", [])


def _noisy_mnist_table(rs: list[dict], pre: list[dict]) -> str:
    return format_table(rs + pre, methods=(*METHODS, *PRETRAINED_METHODS) if pre else METHODS,
                        labels=PRETRAINED_LABELS)


def _pretrained_note(pre: list[dict]) -> str:
    seeds = sorted({int(r["seed"]) for r in pre})
    return (f"; the last three rows are recipe `pretrained` (ImageNet EfficientNet-Lite0 at the "
            f"canvas's 84 px, no VAE; seeds {seeds})") if pre else ""


def tables() -> str:
    rows = read_results_csv(RESULTS / "noisy_mnist.csv")
    by_recipe, pre = _noisy_mnist_by_recipe()
    parts = []
    for recipe, rs in by_recipe.items():
        seeds = sorted({int(r["seed"]) for r in rs})
        extra = pre if recipe == "spadecam" else []
        parts.append(
            f"**Recipe `{recipe}`** — AUROC on the 10,000 Noisy-MNIST test images, mean ± sd over "
            f"seeds {seeds}{_pretrained_note(extra)}; rows marked (paper) are Table I of the "
            "paper.\n\n" + _noisy_mnist_table(rs, extra)
        )
    best = max(by_recipe, key=lambda rec: len({r["seed"] for r in by_recipe[rec]}))
    parts.append(target_table(rows, best))
    abl = RESULTS / "ablations.csv"
    if abl.exists():
        rs = read_results_csv(abl)
        recipe = rs[0].get("recipe", "")
        seeds = sorted({int(r["seed"]) for r in rs})
        parts.append(
            f"**Ablations** (recipe `{recipe}`, seeds {seeds}; every variant scored on the same "
            "trained models)\n\n"
            + format_table(rs, methods=("spade", *ABLATIONS, "spade_bf16", "spade_fp32"), paper=None,
                           labels=ABLATION_LABELS)
        )
    return "\n".join(parts)


def _csv_rows(name: str) -> list[dict]:
    """The rows of a results file, and of its "pretrained" recipe's companion
    (``<name>_pretrained.csv``) when committed."""
    rows: list[dict] = []
    for f in (RESULTS / f"{name}.csv", RESULTS / f"{name}_pretrained.csv"):
        if f.exists():
            with open(f, newline="") as fh:
                rows += list(csv.DictReader(fh))
    return rows


def _elpv_rows() -> list[dict]:
    return _csv_rows("elpv")


def _methods(rows: list[dict], methods: tuple[str, ...]) -> tuple[str, ...]:
    """``methods`` and, where the rows hold them, the pretrained recipe's."""
    have = {r["method"] for r in rows}
    return methods + tuple(m for m in PRETRAINED_METHODS if m in have)


def elpv_headline() -> str:
    """The README's ELPV table: every method and protocol, mean ± sd over seeds."""
    rows = _elpv_rows()
    return format_columns_table(rows, _methods(rows, ELPV_METHODS), ELPV_COLUMNS,
                                labels=ELPV_LABELS)


def _pretrained_goal_check(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """The pretrained SPADE against the one-class pretrained row and every baseline, per
    column (mean over seeds), and its worst seed against its own one-class term (the labels
    must add to it), or the patch kNN row where the rows have no such term."""
    if not any(r["method"] == "spade_pretrained" for r in rows):
        return ""
    stats = summarise(rows, by=("method", "protocol", "subset"))
    per_seed = {(r["method"], r["protocol"], r["subset"], r["seed"]): float(r["auroc"])
                for r in rows}
    others = ("patchcore", "one_class_pretrained", "vae", "cnn", "cnn_pretrained")
    own = ("one_class_pretrained" if any(r["method"] == "one_class_pretrained" for r in rows)
           else "patchcore")
    lines = ["", "**Goal check, pretrained SPADE** (`spade_pretrained`): >= max(one-class "
             "pretrained rows, VAE-based, CNN-based from scratch and pretrained) in every "
             f"column, and on no seed more than 0.01 below the one-class row `{own}` (what the "
             "labels add)", "",
             "| column | SPADE, pretrained | best other (which) | worst seed vs one-class | verdict |",
             "|---|---|---|---|---|"]
    for p, sub, label in columns:
        if ("spade_pretrained", p, sub) not in stats:
            continue
        spade = stats[("spade_pretrained", p, sub)][0]
        best = max((stats[(m, p, sub)][0], m) for m in others if (m, p, sub) in stats)
        seeds = sorted({k[3] for k in per_seed if k[:3] == ("spade_pretrained", p, sub)})
        worst = min(per_seed[("spade_pretrained", p, sub, s)] - per_seed[(own, p, sub, s)]
                    for s in seeds)
        verdict = ("above all" if spade >= best[0]
                   else f"**missed by {best[0] - spade:.3f}** ({ELPV_LABELS.get(best[1], best[1])})")
        verdict += "" if worst >= -0.01 else f"; **a seed {-worst:.3f} below the one-class row**"
        lines.append(f"| {label} | {spade:.3f} | {best[0]:.3f} ({best[1]}) | {worst:+.3f} | "
                     f"{verdict} |")
    return "\n".join(lines) + "\n"


def elpv_tables() -> str:
    """The ELPV table (mean ± sd over seeds) and the issue's goal check per column."""
    rows = _elpv_rows()
    seeds = sorted({int(r["seed"]) for r in rows})
    recipe = rows[0]["recipe"]
    pre = any(r["recipe"] == "pretrained" for r in rows)
    text = (f"AUROC on the ELPV test split, recipe `{recipe}`"
            + (" and, for the three pretrained rows, recipe `pretrained` (224 px, "
               "`benchmarks/results/elpv_pretrained.csv`)" if pre else "")
            + f", mean ± sd over seeds {seeds} (AUPR in `benchmarks/results/elpv.csv`).\n\n"
            + format_columns_table(rows, _methods(rows, ELPV_METHODS + tuple(ELPV_ABLATIONS)),
                                   ELPV_COLUMNS, labels=ELPV_LABELS))
    stats = summarise(rows, by=("method", "protocol", "subset"))
    lines = ["", "**Goal check**: SPADE >= max(VAE-based, CNN-based) in every column, and >= 0.90 "
             "on `unseen_type / all`", "", "| column | SPADE | max(VAE, CNN) | verdict |",
             "|---|---|---|---|"]
    for p, sub in ELPV_COLUMNS:
        spade = stats[("spade", p, sub)][0]
        other = max(stats[("vae", p, sub)][0], stats[("cnn", p, sub)][0])
        verdict = "above both" if spade >= other else f"**missed by {other - spade:.3f}**"
        if (p, sub) == ("unseen_type", "all"):
            verdict += "; 0.90 met" if spade >= 0.90 else f"; **0.90 missed by {0.90 - spade:.3f}**"
        lines.append(f"| {p} / {sub} | {spade:.3f} | {other:.3f} | {verdict} |")
    return text + "\n".join(lines) + "\n" + _pretrained_goal_check(
        rows, [(p, sub, f"{p} / {sub}") for p, sub in ELPV_COLUMNS])


def headline() -> str:
    """The README's Noisy-MNIST table: the recipe with the most seeds, ours beside the paper,
    and the pretrained recipe's rows (the one-class pretrained baseline) under the
    from-scratch recipe's."""
    by_recipe, pre = _noisy_mnist_by_recipe()
    main = max(by_recipe, key=lambda rec: len({r["seed"] for r in by_recipe[rec]}))
    return _noisy_mnist_table(by_recipe[main], pre if main == "spadecam" else [])


def _train_parser() -> argparse.ArgumentParser:
    from spadecam.cli import _build_parser

    sub = next(a for a in _build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def train_options() -> str:
    """Every `spadecam train` option: its default (as argparse has it) and its help."""
    from spadecam.recipes import FIT_DEFAULTS, RECIPE_DEFAULTS, fit_default

    rows = ["| option | default | what it does |", "|---|---|---|"]
    for a in _train_parser()._actions:
        if not a.option_strings or a.dest == "help":
            continue
        opt = " / ".join(a.option_strings)
        if a.required:
            default = "required"
        elif a.default is None and a.dest in RECIPE_DEFAULTS["spadecam"]:
            default = ("the recipe's: pretrained `{}`, spadecam `{}`, paper `{}`".format(
                RECIPE_DEFAULTS["pretrained"][a.dest], RECIPE_DEFAULTS["spadecam"][a.dest],
                RECIPE_DEFAULTS["paper"][a.dest]))
        elif a.default is None and a.dest in FIT_DEFAULTS:
            default = "the recipe's: pretrained `{}`, spadecam and paper `{}`".format(
                fit_default(a.dest, "pretrained"), FIT_DEFAULTS[a.dest])
        elif a.dest == "recipe":
            default = "`pretrained` (`spadecam` for `--detector vae` / `naive-spade`)"
        elif a.default is None or a.default is False:
            default = "–"
        else:
            default = f"`{a.default}`"
        text = " ".join((a.help or "").split()).replace("|", "\\|")
        rows.append(f"| `{opt}` | {default} | {text} |")
    return "\n".join(rows) + "\n"


def defaults_table() -> str:
    """The recipe table: every default the detectors, the CLI and the benchmarks share."""
    from spadecam.recipes import FIT_DEFAULTS, RECIPE_DEFAULTS, fit_default

    cli = {a.dest: max(a.option_strings, key=len) for a in _train_parser()._actions
           if a.option_strings}
    lines = ["| setting | pretrained (default) | spadecam | paper | `spadecam train` | Python |",
             "|---|---|---|---|---|---|"]
    for k in RECIPE_DEFAULTS["spadecam"]:
        py = ("`vae_config=VAEConfig(latent_dim=...)`" if k == "latent_dim"
              else f"`{k}=None`: the recipe's")
        lines.append(f"| {k} | `{RECIPE_DEFAULTS['pretrained'][k]}` | "
                     f"`{RECIPE_DEFAULTS['spadecam'][k]}` | `{RECIPE_DEFAULTS['paper'][k]}` | "
                     f"`{cli.get(k, '–')}` | {py} |")
    for k, v in FIT_DEFAULTS.items():
        where = "`TrainConfig." + k + "`" if k in ("steps", "batch_size", "lr", "seed",
                                                   "head_only") else (
            "`image_size`; None: 224 (pretrained), else the training images' longest side, "
            "at most `max_image_size`" if k == "image_size"
            else "the cap of `image_size` None (spadecam.inputs.model_input_side)"
            if k == "max_image_size" else "`cnn_config`" if k == "backbone" else f"`{k}`")
        lines.append(f"| {k} | `{fit_default(k, 'pretrained')}` | `{v}` | `{v}` | "
                     f"`{cli.get(k, '–')}` | {where} |")
    return "\n".join(lines) + "\n"


def elpv_dra_table() -> str:
    """The field's ELPV protocol (DRA): ours, mean ± sd over seeds, beside the published."""
    from spadecam.bench.elpv import dra_table

    rows = _csv_rows("elpv_dra")
    seeds = sorted({int(r["seed"]) for r in rows})
    pre = any(r["recipe"] == "pretrained" for r in rows)
    cols = [("dra_general_10", "all", "general, 10"), ("dra_general_1", "all", "general, 1"),
            ("dra_hard_mono_10", "poly", "hard 10, seen mono"),
            ("dra_hard_poly_10", "mono", "hard 10, seen poly"),
            ("dra_hard_mono_1", "poly", "hard 1, seen mono"),
            ("dra_hard_poly_1", "mono", "hard 1, seen poly")]
    return (f"Image AUROC, recipe `{rows[0]['recipe']}` (48 px, trained from scratch)"
            + (" and, for the three pretrained rows, recipe `pretrained` (ImageNet "
               "EfficientNet-Lite0 at 224 px, `benchmarks/results/elpv_dra_pretrained.csv`)"
               if pre else "")
            + f", mean ± sd over seeds {seeds} (`benchmarks/results/elpv_dra.csv`); published "
            "rows: ImageNet-pretrained ResNet-18 at 448 px, mean of 3 runs.\n\n"
            + dra_table(rows, _methods(rows, ELPV_METHODS + tuple(ELPV_ABLATIONS)))
            + _pretrained_goal_check(rows, cols))


def blocks() -> dict[str, str]:
    """Every generated block, by marker name."""
    made = {"tables": tables(), "noisy-mnist-headline": headline(),
            "train-options": train_options(), "defaults": defaults_table()}
    if (RESULTS / "elpv.csv").exists():
        made.update({"elpv": elpv_tables(), "elpv-headline": elpv_headline()})
    if (RESULTS / "elpv_dra.csv").exists():
        made["elpv-dra"] = elpv_dra_table()
    return made


def replace_block(text: str, name: str, content: str) -> str | None:
    """``text`` with the block ``name`` replaced by ``content``; None if it has no such block."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        return None
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{content}\n{end}{tail}"


def write_blocks(made: dict[str, str]) -> None:
    """Put each block into the page that holds its markers; SystemExit naming any not found."""
    found = set()
    for page in PAGES:
        src = new = page.read_text()
        for name, text in made.items():
            out = replace_block(new, name, text)
            if out is not None:
                new, _ = out, found.add(name)
        if new != src:
            atomic_write_text(page, new)
            print(f"rewrote the generated blocks in {page.relative_to(ROOT)}")
    missing = set(made) - found
    if missing:
        raise SystemExit(f"markers not found in README.md or docs/*.md: {sorted(missing)}")


def main(make=blocks, what: str = "the blocks") -> None:
    """``--print`` prints ``make()``'s blocks, else writes them into the pages."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--print", action="store_true", help=f"print {what} instead of rewriting")
    args = p.parse_args()
    made = make()
    if args.print:
        for name, text in made.items():
            print(f"<!-- {name} -->\n{text}")
        return
    write_blocks(made)


if __name__ == "__main__":
    main()
