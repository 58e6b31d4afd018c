"""Tests for spadecam.bench.tables: AUROC, summaries, the Table I layout and results CSVs."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from spadecam.bench.tables import (
    PAPER_TABLE_I,
    RESULT_COLUMNS,
    format_table,
    read_results_csv,
    summarise,
    write_results_csv,
)
from spadecam.metrics import auroc


def pairwise_auroc(labels, scores) -> float:
    """P(score of a positive > score of a negative) + 0.5 P(tie), by enumeration."""
    pos = [s for lab, s in zip(labels, scores) if lab == 1]
    neg = [s for lab, s in zip(labels, scores) if lab == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


# --------------------------------------------------------------------------- auroc


def test_auroc_hand_example():
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs won (0.35>0.1), (0.8>0.1), (0.8>0.4);
    # lost (0.35<0.4) -> 3/4
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_auroc_ties_and_extremes():
    assert auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert auroc([0, 0, 1], [1, 2, 3]) == pytest.approx(1.0)
    assert auroc([0, 0, 1], [3, 2, 1]) == pytest.approx(0.0)


def test_auroc_matches_pairwise_count_on_random_data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = rng.integers(0, 8, 60).astype(float)  # many ties
    assert auroc(labels, scores) == pytest.approx(pairwise_auroc(labels, scores))


def test_auroc_single_class_raises():
    with pytest.raises(ValueError, match="single class"):
        auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="single class"):
        auroc(np.zeros(4), np.arange(4.0))


def test_auroc_length_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        auroc([0, 1, 1], [0.1, 0.2])


# --------------------------------------------------------------------------- summarise


def sample_rows():
    return [
        dict(method="spade", known_class=1, seed=0, auroc=0.80),
        dict(method="spade", known_class=1, seed=1, auroc=0.90),
        dict(method="spade", known_class=1, seed=2, auroc=0.86),
        dict(method="spade", known_class=3, seed=0, auroc=0.70),
        dict(method="vae", known_class=1, seed=0, auroc=0.60),
        dict(method="vae", known_class=3, seed=0, auroc=0.64),
    ]


def test_summarise_against_numpy():
    stats = summarise(sample_rows())
    vals = np.array([0.80, 0.90, 0.86])
    mean, sd, n = stats[("spade", 1)]
    assert mean == pytest.approx(vals.mean())
    assert sd == pytest.approx(vals.std(ddof=1))
    assert sd == pytest.approx(math.sqrt(((vals - vals.mean()) ** 2).sum() / 2))
    assert n == 3
    assert stats[("spade", 3)] == (pytest.approx(0.70), 0.0, 1)
    assert set(stats) == {("spade", 1), ("spade", 3), ("vae", 1), ("vae", 3)}


def test_summarise_accepts_strings_from_csv():
    rows = [
        dict(method="cnn", known_class="5", seed="0", auroc="0.25"),
        dict(method="cnn", known_class="5", seed="1", auroc="0.75"),
    ]
    mean, sd, n = summarise(rows)[("cnn", 5)]
    assert (mean, n) == (pytest.approx(0.5), 2)
    assert sd == pytest.approx(np.std([0.25, 0.75], ddof=1))


# --------------------------------------------------------------------------- format_table


def test_format_table_has_paper_figures_and_our_means():
    table = format_table(sample_rows())
    lines = table.strip().splitlines()
    assert "known 1" in lines[0] and "known 3" in lines[0] and "Avg" in lines[0]
    spade_ours = next(line for line in lines if line.startswith("| SPADE (ours)"))
    spade_paper = next(line for line in lines if line.startswith("| SPADE (paper)"))
    vae_ours = next(line for line in lines if line.startswith("| VAE-based (ours)"))
    vae_paper = next(line for line in lines if line.startswith("| VAE-based (paper)"))
    # ours: means (0.8 + 0.9 + 0.86) / 3 = 0.8533 with sd over 3 seeds; class 3 one seed
    sd = np.std([0.80, 0.90, 0.86], ddof=1)
    assert "0.853" in spade_ours and f"{sd:.3f}" in spade_ours and "0.700" in spade_ours
    assert f"{(0.85333333 + 0.70) / 2:.3f}" in spade_ours  # average over classes: 0.777
    # paper: SPADE known 1 = 0.85, known 3 = 0.87 (Table I); average of the shown classes
    assert "0.85" in spade_paper and "0.87" in spade_paper and "0.86" in spade_paper
    assert "0.600" in vae_ours and "0.640" in vae_ours and "0.620" in vae_ours
    assert vae_paper.count("0.63") == 3
    # methods with no rows are left out; paper order VAE before SPADE
    assert "CNN-based" not in table and "Naive SPADE" not in table
    assert lines.index(vae_ours) < lines.index(spade_ours)


def test_paper_table_values():
    # Narita et al. Table I, transcribed independently
    assert PAPER_TABLE_I["spade"] == {1: 0.85, 3: 0.87, 5: 0.92, 7: 0.86, 9: 0.90}
    assert PAPER_TABLE_I["cnn"] == {1: 0.73, 3: 0.88, 5: 0.96, 7: 0.88, 9: 0.96}
    assert PAPER_TABLE_I["naive_spade"] == {1: 0.67, 3: 0.59, 5: 0.65, 7: 0.76, 9: 0.53}
    assert set(PAPER_TABLE_I["vae"].values()) == {0.63}


def test_format_table_without_paper():
    table = format_table(sample_rows(), paper=None)
    assert "(paper)" not in table and "(ours)" in table


# --------------------------------------------------------------------------- CSV


def test_results_csv_round_trip(tmp_path):
    rows = [dict(r, recipe="paper-quick") for r in sample_rows()]
    rows[0]["auroc"] = 0.123456789
    path = tmp_path / "sub" / "results.csv"
    write_results_csv(path, rows)
    text = path.read_text()
    assert text.splitlines()[0] == "method,known_class,seed,auroc,recipe"
    assert text.splitlines()[0].startswith(",".join(RESULT_COLUMNS))
    back = read_results_csv(path)
    assert len(back) == len(rows)
    for r, b in zip(rows, back):
        assert b["method"] == r["method"]
        assert int(b["known_class"]) == r["known_class"]
        assert int(b["seed"]) == r["seed"]
        assert float(b["auroc"]) == pytest.approx(r["auroc"], abs=5e-7)
        assert b["recipe"] == "paper-quick"
    s_back, s_rows = summarise(back), summarise(rows)
    assert set(s_back) == set(s_rows)
    for k in s_rows:
        assert s_back[k][0] == pytest.approx(s_rows[k][0], abs=1e-6)
        assert s_back[k][2] == s_rows[k][2]
    # no temp files left behind by the atomic write
    assert [p.name for p in path.parent.iterdir()] == ["results.csv"]


def test_results_csv_header_first_even_with_extras_first(tmp_path):
    path = tmp_path / "r.csv"
    write_results_csv(path, [dict(extra=1, auroc=0.5, seed=0, known_class=1, method="cnn")])
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    assert header == ["method", "known_class", "seed", "auroc", "extra"]


def test_read_results_csv_missing_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("method,seed,auroc\ncnn,0,0.5\n")
    with pytest.raises(ValueError, match="known_class"):
        read_results_csv(path)


def test_write_rows_csv_appends_under_one_header_and_formats_the_named_floats(tmp_path):
    from spadecam.bench.tables import write_rows_csv

    out = tmp_path / "log.csv"
    cols = ["variant", "lr", "auroc"]
    write_rows_csv(out, [{"variant": "a", "lr": 1e-5, "auroc": 0.81234}], cols, digits=4,
                   append=True, fixed=("auroc",))
    write_rows_csv(out, [{"variant": "b", "lr": 0.5, "auroc": 0.7}], cols, digits=4,
                   append=True, fixed=("auroc",))
    # one header; AUROC to 4 decimals, the learning rate as str gives it
    assert out.read_text() == "variant,lr,auroc\na,1e-05,0.8123\nb,0.5,0.7000\n"
    # other columns: the rows are kept, in a new file beside it, and the log is left as it was
    with pytest.warns(UserWarning, match=r"log\.csv: its columns.*log_2\.csv"):
        written = write_rows_csv(out, [{"variant": "c"}], ["variant"], append=True)
    assert written == tmp_path / "log_2.csv" and written.read_text() == "variant\nc\n"
    assert out.read_text().count("\n") == 3
    write_rows_csv(out, [{"variant": "c", "lr": 0.25, "auroc": 0.5}], cols)  # no append: anew
    assert out.read_text() == "variant,lr,auroc\nc,0.250000,0.500000\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv", "log_2.csv"]  # no temp
