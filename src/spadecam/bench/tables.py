"""Benchmark result tables: per-seed AUROC rows summarised (mean ± sd), the paper's Table I for
comparison, and the results CSVs (written whole, then renamed)."""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from spadecam._fs import atomic_write_text

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "PAPER_TABLE_I",
    "RESULT_COLUMNS",
    "format_table",
    "read_results_csv",
    "summarise",
    "write_results_csv",
]

#: Method keys in results files, in the paper's row order.
METHODS = ("vae", "cnn", "naive_spade", "spade")
METHOD_LABELS = {
    "vae": "VAE-based",
    "cnn": "CNN-based",
    "naive_spade": "Naive SPADE",
    "spade": "SPADE",
}
#: Narita et al., arXiv 1810.02607, Table I: AUROC on Noisy-MNIST by known anomaly class.
PAPER_TABLE_I = {
    "vae": {1: 0.63, 3: 0.63, 5: 0.63, 7: 0.63, 9: 0.63},
    "cnn": {1: 0.73, 3: 0.88, 5: 0.96, 7: 0.88, 9: 0.96},
    "naive_spade": {1: 0.67, 3: 0.59, 5: 0.65, 7: 0.76, 9: 0.53},
    "spade": {1: 0.85, 3: 0.87, 5: 0.92, 7: 0.86, 9: 0.90},
}
RESULT_COLUMNS = ("method", "known_class", "seed", "auroc")


def _group_key(v: object) -> object:
    # rows read back from a CSV hold strings: "3" groups with 3
    return int(str(v)) if str(v).lstrip("-").isdigit() else str(v)


def summarise(
    rows: Iterable[dict], by: Sequence[str] = ("method", "known_class"), key: str = "auroc"
) -> dict[tuple, tuple[float, float, int]]:
    """Mean, sample sd (0 for one seed) and count of ``key`` per group of the ``by`` columns.

    The default groups Noisy-MNIST rows per (method, known_class); the benchmark tables group
    per (method, protocol, subset). Integer-valued columns group as ints.
    """
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        groups[tuple(_group_key(r[b]) for b in by)].append(float(r[key]))
    out = {}
    for k, vals in groups.items():
        sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        out[k] = (float(np.mean(vals)), sd, len(vals))
    return out


def _cell(mean: float, sd: float, n: int) -> str:
    return f"{mean:.3f}" if n < 2 else f"{mean:.3f} ± {sd:.3f}"


def format_table(
    rows: Iterable[dict],
    methods: Sequence[str] = METHODS,
    paper: dict[str, dict[int, float]] | None = PAPER_TABLE_I,
    labels: dict[str, str] | None = None,
) -> str:
    """Markdown table in the layout of the paper's Table I, ours beside the paper's.

    One row per method; one column per known anomaly class plus the average over classes.
    Cells are the mean AUROC (± sd over seeds when there are several) and, where the paper
    reports the method, a second line-row ``paper`` with its figure.
    """
    rows = list(rows)
    stats = summarise(rows)
    classes = sorted({k for (_, k) in stats})
    labels = {**METHOD_LABELS, **(labels or {})}
    head = "| Method | " + " | ".join(f"known {k}" for k in classes) + " | Avg |"
    lines = [head, "|" + "---|" * (len(classes) + 2)]
    for m in methods:
        if not any((m, k) in stats for k in classes):
            continue
        cells, means = [], []
        for k in classes:
            if (m, k) in stats:
                mean, sd, n = stats[(m, k)]
                cells.append(_cell(mean, sd, n))
                means.append(mean)
            else:
                cells.append("—")
        avg = f"{np.mean(means):.3f}" if means else "—"
        lines.append(f"| {labels.get(m, m)} (ours) | " + " | ".join(cells) + f" | {avg} |")
        if paper and m in paper:
            pv = [paper[m].get(k, math.nan) for k in classes]
            pcells = ["—" if math.isnan(v) else f"{v:.2f}" for v in pv]
            pavg = np.nanmean(pv) if not all(math.isnan(v) for v in pv) else math.nan
            pavg_s = "—" if math.isnan(pavg) else f"{pavg:.2f}"
            lines.append(
                f"| {labels.get(m, m)} (paper) | " + " | ".join(pcells) + f" | {pavg_s} |"
            )
    return "\n".join(lines) + "\n"


def write_results_csv(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Write result rows with the columns method,known_class,seed,auroc (+ any extras)."""
    rows = list(rows)
    extra = [k for r in rows for k in r if k not in RESULT_COLUMNS]
    cols = list(RESULT_COLUMNS) + list(dict.fromkeys(extra))
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        r = dict(r)
        if isinstance(r.get("auroc"), float):
            r["auroc"] = f"{r['auroc']:.6f}"
        w.writerow(r)
    atomic_write_text(path, buf.getvalue())


def write_rows_csv(path: str | os.PathLike, rows: Iterable[dict], columns: Sequence[str],
                   digits: int = 6, append: bool = False,
                   fixed: Sequence[str] | None = None) -> Path:
    """Write rows with exactly ``columns``, atomically (a temp file, then a rename).

    Floats get ``digits`` decimals: every float column, or only those named in ``fixed``
    (the others as ``str`` gives them: a learning rate of 1e-5 stays 1e-05).
    ``append``: the rows go after those already in ``path`` (the benchmarks' validation
    logs, one run after another); a new file gets the header. Appending to a file whose
    header is not ``columns`` would mix two tables: the rows go to a new file beside it
    instead (``<stem>_2.csv``, ``_3``, ...), with a warning naming both, so that a long
    run's results are never lost at the end.

    Returns
    -------
    pathlib.Path of the file written.
    """
    import io

    from spadecam._progress import warn

    buf = io.StringIO()
    cols = list(columns)
    path = Path(path)
    old = path.read_text() if append and path.is_file() else ""
    if old and next(csv.reader([old.splitlines()[0]])) != cols:
        other, k = path, 1
        while other.exists():
            k += 1
            other = path.with_name(f"{path.stem}_{k}{path.suffix}")
        warn(f"{path}: its columns are not this run's {cols}; wrote the rows to {other}")
        path, old = other, ""
    if old:
        buf.write(old if old.endswith("\n") else old + "\n")
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    if not old:
        w.writeheader()
    for r in rows:
        w.writerow({k: f"{v:.{digits}f}" if isinstance(v, float) and (fixed is None or k in fixed)
                    else v for k, v in r.items()})
    return atomic_write_text(path, buf.getvalue())


def read_results_csv(path: str | os.PathLike) -> list[dict]:
    """Read rows written by :func:`write_results_csv`.

    Raises
    ------
    ValueError
        When a required column is missing (the message names the file and the columns).
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in RESULT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; expected {RESULT_COLUMNS}")
        return [dict(r) for r in reader]


def format_columns_table(
    rows: Sequence[dict], methods: Sequence[str], columns: Sequence[tuple[str, str]],
    key: str = "auroc", labels: dict[str, str] | None = None,
) -> str:
    """Markdown table: one row per method, one column per (protocol, subset), mean ± sd."""
    stats = summarise(rows, by=("method", "protocol", "subset"), key=key)
    labels = {**METHOD_LABELS, **(labels or {})}
    head = "| method | " + " | ".join(f"{p} / {s}" for p, s in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    for m in methods:
        cells = []
        for p, s in columns:
            if (m, p, s) not in stats:
                cells.append("–")
                continue
            mean, sd, n = stats[(m, p, s)]
            cells.append(f"{mean:.3f} ± {sd:.3f}" if n > 1 else f"{mean:.3f}")
        lines.append(f"| {labels.get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
