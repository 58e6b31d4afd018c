"""ELPV benchmark: labels, the committed split file, and the whole runner on small
generated cell images (nothing is downloaded and elpv-dataset is not needed)."""

from __future__ import annotations

import builtins
import collections
import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spadecam.bench.configs import BenchmarkConfig
from spadecam.bench.elpv import run_elpv
from spadecam.bench.protocols import ELPV_SPLIT, elpv_data
from spadecam.cli import main
from spadecam.data.elpv import (
    ElpvCell,
    elpv_dir,
    label_of,
    make_split,
    read_labels,
    read_split,
    split_to_csv,
)
from spadecam.models import CNNConfig, VAEConfig
from spadecam.training import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def test_labels_by_defect_probability():
    assert label_of(0.0) == "normal"
    assert label_of(1 / 3) == "uncertain"
    assert label_of(0.6666666666666666) == "defective" and label_of(1.0) == "defective"
    with pytest.raises(ValueError, match="defect probability must be in"):
        label_of(1.5)


def test_split_is_stratified_60_20_20_by_probability_and_type():
    cells = [ElpvCell(f"images/c{i}.png", p, t) for i, (p, t) in enumerate(
        [(0.0, "mono")] * 10 + [(1.0, "poly")] * 5 + [(1 / 3, "mono")] * 3)]
    split = make_split(cells, seed=1)
    count = collections.Counter((c.probability, c.type, c.split) for c in split)
    # 10 -> 6/2/2; 5 -> round(3.0)=3 / round(1.0)=1 / 1; 3 -> round(1.8)=2 / round(0.6)=1 / 0
    assert [count[(0.0, "mono", s)] for s in ("train", "val", "test")] == [6, 2, 2]
    assert [count[(1.0, "poly", s)] for s in ("train", "val", "test")] == [3, 1, 1]
    assert [count[(1 / 3, "mono", s)] for s in ("train", "val", "test")] == [2, 1, 0]
    assert [c.path for c in split] == [c.path for c in cells]  # input order kept
    assert make_split(cells, seed=1) == split  # fixed seed, fixed split


def test_committed_split_file():
    cells = read_split(ELPV_SPLIT)
    assert len(cells) == 2624 and len({c.path for c in cells}) == 2624
    # the file is what make_split gives for its own labels (nothing hand-edited)
    again = make_split([ElpvCell(c.path, c.probability, c.type) for c in cells])
    assert [c.split for c in again] == [c.split for c in cells]
    count = collections.Counter((c.label, c.type, c.split) for c in cells)
    assert count[("defective", "mono", "train")] == 222  # the unseen_type known anomalies
    assert count[("normal", "mono", "test")] + count[("normal", "poly", "test")] == 301


def test_read_split_names_the_file_and_line(tmp_path):
    bad = tmp_path / "split.csv"
    bad.write_text("path,probability,type,split\nimages/a.png,0.0,mono,train\n"
                   "images/b.png,0.0,mono,holdout\n")
    with pytest.raises(ValueError, match=r"split.csv:3: split must be one of"):
        read_split(bad)
    bad.write_text("path,prob\n")
    with pytest.raises(ValueError, match="expected the header"):
        read_split(bad)


@pytest.fixture
def without_elpv_package(monkeypatch):
    """Imports of elpv_dataset fail as if the [benchmarks] extra were not installed."""
    real = builtins.__import__

    def no_elpv(name, *a, **k):
        if name == "elpv_dataset":
            raise ModuleNotFoundError("No module named 'elpv_dataset'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_elpv)


def test_missing_package_names_the_extra(without_elpv_package):
    with pytest.raises(ModuleNotFoundError, match=r"pip install -e '\.\[benchmarks\]'"):
        elpv_dir()


def fake_elpv(tmp_path, n_normal=60, n_defect=45, n_uncertain=10):
    """labels.csv + 24 px cells: defective ones carry a bright crack line."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    lines, cells = [], []
    rows = ([(0.0, t) for t in ("mono", "poly") for _ in range(n_normal // 2)]
            + [(1.0, t) for t in ("mono", "poly") for _ in range(n_defect)]
            + [(1 / 3, "poly")] * n_uncertain)
    for i, (p, t) in enumerate(rows):
        a = rng.integers(60, 90, (24, 24), dtype=np.uint8)
        if p > 0:
            r = rng.integers(4, 20)
            a[r, 3:21] = 250 if t == "mono" else 10
        name = f"images/cell{i:04d}.png"
        Image.fromarray(a).save(tmp_path / name)
        lines.append(f"{name}  {p}  {t}")
        cells.append(ElpvCell(name, p, t))
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    split = tmp_path / "split.csv"
    split.write_text(split_to_csv(make_split(cells)))
    return tmp_path, split


TINY = BenchmarkConfig(
    name="tiny",
    vae=VAEConfig(latent_dim=4, channels=(8, 8)),
    cnn=CNNConfig(channels=(8, 8), kernel_sizes=(3, 3), strides=(2, 2)),
    vae_train=TrainConfig(steps=8, batch_size=16, progress=False),
    cnn_train=TrainConfig(steps=8, batch_size=16, progress=False),
    image_size=16,
)


def test_elpv_data_protocols_and_columns(tmp_path):
    root, split = fake_elpv(tmp_path)
    assert len(read_labels(root / "labels.csv")) == 160
    d = elpv_data(0, 16, "test", split, root)
    cells = [c for c in read_split(split) if c.split == "test"]
    assert d.x_test.shape == (len(cells), 1, 16, 16) and d.x_normal.dtype.is_floating_point is False
    assert d.y_test.tolist() == [int(c.label != "normal") for c in cells]
    prots = {p.name: p for p in d.protocols}
    assert len(prots["unseen_type"].x_known) == 27  # round(0.6 * 45) mono defective cells
    assert (len(prots["few_labels_10"].x_known), len(prots["few_labels_50"].x_known)) == (10, 50)
    assert prots["cnn_all_labels"].rename == {"cnn": "cnn_all_labels"}
    mono = prots["unseen_type"].columns[("unseen_type", "mono")]
    kinds = {(cells[i].label, cells[i].type) for i in mono}
    assert kinds == {("normal", "mono"), ("normal", "poly"), ("defective", "mono")}
    unc = prots["unseen_type"].columns[("unseen_type", "uncertain")]
    assert {cells[i].label for i in unc} == {"normal", "uncertain"}


@pytest.mark.slow
def test_run_elpv_writes_the_results_csv(tmp_path):
    root, split = fake_elpv(tmp_path)
    rows = run_elpv(seeds=[0, 1], recipe=TINY, protocols="ours", out_dir=tmp_path / "out", progress=False,
                    root=root, split_file=split, log=lambda *a: None)
    with open(tmp_path / "out" / "results.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == ["method", "protocol", "subset", "seed", "auroc", "aupr", "recipe"]
    methods = {r["method"] for r in got}
    assert methods == {"vae", "cnn", "naive_spade", "spade", "cnn_all_labels", "spade_paper_roi",
                       "spade_no_knn"}
    # 4 methods x 6 columns + the reference and the 2 ablations in each column, for 2 seeds
    assert len(got) == len(rows) == 2 * (4 * 6 + 6 + 2 * 6)
    assert all(0 <= float(r["auroc"]) <= 1 and 0 <= float(r["aupr"]) <= 1 for r in got)
    assert "| SPADE |" in (tmp_path / "out" / "table.md").read_text()
    # the same seed gives the same numbers
    again = run_elpv(seeds=[0], recipe=TINY, protocols="ours", progress=False, root=root, split_file=split,
                     log=lambda *a: None)
    assert [r["auroc"] for r in again] == [r["auroc"] for r in rows if r["seed"] == 0]
    # --ablations is honoured: without it the ablation rows are not computed
    plain = run_elpv(seeds=[0], recipe=TINY, protocols="ours", progress=False, root=root, split_file=split,
                     log=lambda *a: None, ablations=False)
    assert not {"spade_paper_roi", "spade_no_knn"} & {r["method"] for r in plain}
    assert [r["auroc"] for r in plain] == [r["auroc"] for r in again
                                           if r["method"] not in ("spade_paper_roi", "spade_no_knn")]


def test_cli_reproduce_elpv_without_the_package(without_elpv_package, capsys):
    assert main(["reproduce", "elpv", "--quick", "--no-progress"]) == 2
    assert "benchmarks" in capsys.readouterr().err


def test_quick_recipe_is_smaller():
    from spadecam.bench.configs import _elpv_quick, _elpv_spadecam

    r = _elpv_spadecam()
    q = _elpv_quick(r)
    assert q.image_size < r.image_size and q.vae_train.steps < r.vae_train.steps
    assert dataclasses.replace(q, name=r.name, image_size=r.image_size, vae_train=r.vae_train,
                               cnn_train=r.cnn_train) == r


def test_the_split_file_is_package_data():
    # it was found through the repository root (parents[2] / "benchmarks"), which
    # an installed wheel does not have
    import spadecam

    assert ELPV_SPLIT.is_file()
    assert ELPV_SPLIT.is_relative_to(Path(spadecam.__file__).parent)


def test_every_score_of_a_run_is_in_its_one_precision(tmp_path, cpu_bf16):
    # the fault: ELPV's ablation rows (and validate.py's variants) were scored with
    # SPADE's default precision "auto" -- bf16 on AVX512-BF16 / AMX CPUs -- beside fp32 rows
    from spadecam.bench.elpv import ELPV_ABLATIONS
    from spadecam.bench.runner import run_benchmark, spade_scores
    from spadecam.detectors import SPADE

    cpu_bf16(True, True)  # "auto" resolves to bf16 here, whatever this CPU is
    root, split = fake_elpv(tmp_path)
    seen = {}

    def check(res):
        if res.protocol.name != "unseen_type":
            return
        params = ELPV_ABLATIONS["spade_paper_roi"]
        got = res.spade(**params)
        kw = {"cam_layer": TINY.cam_layer, "upsample": TINY.upsample,
              "error_smoothing": TINY.error_smoothing, "error_norm": TINY.error_norm, **params}
        fp32 = spade_scores(SPADE.from_models(res.vae, res.cnn, precision="32", **kw, recipe="spadecam"),
                            res.data.x_test, res.u_hat)
        bf16 = spade_scores(SPADE.from_models(res.vae, res.cnn, precision="bf16", **kw, recipe="spadecam"),
                            res.data.x_test, res.u_hat)
        seen.update(equal_fp32=np.array_equal(got, fp32), equal_bf16=np.array_equal(got, bf16),
                    precision=res.execution.score_precision)

    run_benchmark(lambda seed: elpv_data(seed, 16, "test", split, root), TINY, [0],
                  progress=False, log=lambda *a: None, on_protocol=check)
    assert seen == {"equal_fp32": True, "equal_bf16": False, "precision": "32"}


def test_run_elpv_takes_a_precision(tmp_path):
    root, split = fake_elpv(tmp_path)
    rows = run_elpv(seeds=[0], recipe=TINY, protocols="ours", progress=False, root=root, split_file=split,
                    log=lambda *a: None, ablations=False, precision="bf16")
    assert {(r["train_precision"], r["score_precision"]) for r in rows} == {("bf16-mixed",
                                                                            "bf16")}
    default = run_elpv(seeds=[0], recipe=TINY, protocols="ours", progress=False, root=root, split_file=split,
                       log=lambda *a: None, ablations=False)
    # the recipe's training precision (the ELPV recipes': fp32), fp32 scoring, as the
    # committed table was measured
    from spadecam.precision import resolve_training_precision

    assert {(r["train_precision"], r["score_precision"]) for r in default} == {
        (resolve_training_precision("auto", "cpu"), "32")}


# --------------------------------------------------------------------------- DRA protocol


def test_dra_files_follow_the_protocols_rules(tmp_path):
    import csv as _csv

    from spadecam.data.elpv_dra import (
        DRA_PROTOCOLS,
        dra_anomalies,
        dra_known,
        dra_normal_split,
        make_dra_files,
    )

    root, _ = fake_elpv(tmp_path)
    cells = read_labels(root / "labels.csv")
    train, test = dra_normal_split(cells)
    normal = [c for c in cells if c.probability == 0]
    assert (len(train), len(test)) == (45, 15)  # train_test_split(test_size=0.25) of 60
    assert sorted(c.path for c in train + test) == sorted(c.path for c in normal)
    anomalies = dra_anomalies(cells)
    assert all(c.probability == 1.0 for c in anomalies) and len(anomalies) == 90  # no 1/3
    for name, p in DRA_PROTOCOLS.items():
        known, rest = dra_known(cells, name, 0)
        assert len(known) == p.n and not {c.path for c in known} & {c.path for c in rest}
        if p.seen is None:  # general: the n known and the test anomalies are all of them
            assert sorted(c.path for c in known + rest) == sorted(c.path for c in anomalies)
        else:  # hard: known of the seen type, every cell of the other type as the test
            assert {c.type for c in known} == {p.seen}
            assert sorted(c.path for c in rest) == sorted(
                c.path for c in anomalies if c.type == p.unseen)
    # the 1-shot cell is the first of the 10 (one shuffle per seed), seeds draw differently
    assert dra_known(cells, "dra_general_1", 0)[0] == dra_known(cells, "dra_general_10", 0)[0][:1]
    assert dra_known(cells, "dra_general_10", 0)[0] != dra_known(cells, "dra_general_10", 1)[0]
    split, known = make_dra_files(cells)
    assert split.splitlines()[0] == "path,type,split" and len(split.splitlines()) == 61
    rows = list(_csv.DictReader(known.splitlines()))
    assert len(rows) == 3 * (10 + 1 + 10 + 10 + 1 + 1)


def test_the_committed_dra_files_are_the_rules_applied_to_labels_csv():
    # the real data set: 1,508 normals split 1,131 / 377, 715 anomalies (313 mono, 402 poly),
    # as the protocol's paper states them
    pytest.importorskip("elpv_dataset")
    from spadecam.data.elpv_dra import (
        DRA_KNOWN,
        DRA_SPLIT,
        dra_anomalies,
        dra_normal_split,
        make_dra_files,
    )

    cells = read_labels(elpv_dir() / "labels.csv")
    train, test = dra_normal_split(cells)
    anomalies = dra_anomalies(cells)
    assert (len(train), len(test), len(anomalies)) == (1131, 377, 715)
    assert sum(c.type == "mono" for c in anomalies) == 313
    split, known = make_dra_files(cells)
    assert DRA_SPLIT.read_text() == split and DRA_KNOWN.read_text() == known


def test_dra_benchmark_runs_on_the_one_runner(tmp_path):
    from spadecam.bench.elpv import dra_table
    from spadecam.bench.protocols import DRA_COLUMNS, elpv_dra_data
    from spadecam.bench.runner import run_benchmark
    from spadecam.data.elpv_dra import make_dra_files

    root, _ = fake_elpv(tmp_path)
    split, known = make_dra_files(read_labels(root / "labels.csv"))
    (tmp_path / "s.csv").write_text(split)
    (tmp_path / "k.csv").write_text(known)
    seen = {}

    def check(res):
        (col, idx), = res.protocol.columns.items()
        seen[col] = (len(res.protocol.x_known), int(res.data.y_test[idx].sum()),
                     int((res.data.y_test[idx] == 0).sum()))

    rows = run_benchmark(
        lambda seed: elpv_dra_data(seed, 16, root, split_file=tmp_path / "s.csv",
                                   known_file=tmp_path / "k.csv"),
        TINY, [0], progress=False, log=lambda *a: None, on_protocol=check)
    # 15 test normals against 90 - n (general) or the 45 cells of the other type (hard)
    assert seen == {("dra_general_10", "all"): (10, 80, 15), ("dra_general_1", "all"): (1, 89, 15),
                    ("dra_hard_mono_10", "poly"): (10, 45, 15),
                    ("dra_hard_poly_10", "mono"): (10, 45, 15),
                    ("dra_hard_mono_1", "poly"): (1, 45, 15),
                    ("dra_hard_poly_1", "mono"): (1, 45, 15)}
    assert set(seen) == set(DRA_COLUMNS)
    table = dra_table(rows)
    assert "| SPADE (ours) |" in table and "| AHL (published) | 0.850 | 0.828 |" in table


def test_dra_lists_that_do_not_fit_the_data_are_one_clear_error(tmp_path):
    from spadecam.bench.protocols import elpv_dra_data

    root, _ = fake_elpv(tmp_path)  # the committed lists name the real data set's cells
    with pytest.raises(ValueError, match="make_dra_files"):
        elpv_dra_data(0, 16, root)
    with pytest.raises(ValueError, match="protocols must be one of"):
        run_elpv(recipe=TINY, root=root, protocols="mine", log=lambda *a: None)


def test_synthetic_anomalies_join_the_known_class_once_per_seed(tmp_path, monkeypatch):
    import dataclasses as _dc

    from spadecam.bench import runner as benchmark

    root, split = fake_elpv(tmp_path)
    seen, made = [], []
    real_train, real_cutpaste = benchmark.train_cnn, __import__(
        "spadecam.bench.synthetic", fromlist=["cutpaste"]).cutpaste

    def train_cnn(x, y, *a, **k):
        seen.append((int((y == 0).sum()), int((y == 1).sum())))
        return real_train(x, y, *a, **k)

    def cutpaste(x, n, seed=0):
        made.append(n)
        return real_cutpaste(x, n, seed)

    monkeypatch.setattr(benchmark, "train_cnn", train_cnn)
    monkeypatch.setattr("spadecam.bench.synthetic.cutpaste", cutpaste)
    data = lambda seed: elpv_data(seed, 16, "test", split, root)  # noqa: E731
    benchmark.run_benchmark(data, _dc.replace(TINY, synthetic_anomalies=0.5), [0],
                            progress=False, log=lambda *a: None)
    plain = list(seen)
    n_normal = plain[0][0]
    # half as many synthetic anomalies as normal training images, made once for the seed
    assert made == [round(0.5 * n_normal)]
    seen.clear()
    benchmark.run_benchmark(data, TINY, [0], progress=False, log=lambda *a: None)
    assert [k for _, k in plain] == [k + made[0] for _, k in seen]


def test_the_feature_bank_is_built_once_per_block_and_reused_by_the_variants(tmp_path,
                                                                              monkeypatch):
    # the hot path: every ablation variant rebuilt the bank (a classifier pass over
    # all training normals)
    from spadecam.bench.runner import run_benchmark, spade_scores
    from spadecam.detectors import SPADE

    root, split = fake_elpv(tmp_path)
    built, per_protocol, same = [], [], {}
    real = SPADE.build_feature_bank

    def build(self, x):
        built.append(self.knn_layer)
        return real(self, x)

    monkeypatch.setattr(SPADE, "build_feature_bank", build)
    kw = {"cam_layer": TINY.cam_layer, "upsample": TINY.upsample,
          "error_smoothing": TINY.error_smoothing, "error_norm": TINY.error_norm}

    def check(res):
        per_protocol.append((list(built), "spade" in res.protocol.methods))
        built.clear()
        if res.protocol.name != "unseen_type":
            return
        for params in ({}, {"roi_power": 2.0}, {"knn_layer": 0}, {"knn_power": 3.0}):
            got = res.spade(**params)
            assert not built  # every variant's bank was built before: reused
            bare = SPADE.from_models(res.vae, res.cnn, precision="32",
                                     **{**kw, **params, "knn_power": 0.0}, recipe="spadecam")
            fresh = SPADE.from_models(res.vae, res.cnn, precision="32", **kw, **params,
                                      knn_bank=real(bare, res.data.x_normal), recipe="spadecam")
            # allclose, not equal: the bank's query comes from a batch of another size (the
            # 2N-image Grad-CAM forward vs an N-image one), and CPU kernels may add in
            # another order there
            same[str(params)] = np.allclose(
                got, spade_scores(fresh, res.data.x_test, res.u_hat), rtol=1e-6, atol=0)

    ablations = {"roi2": {"roi_power": 2.0}, "block0": {"knn_layer": 0}}
    run_benchmark(lambda seed: elpv_data(seed, 16, "test", split, root), TINY, [0],
                  progress=False, log=lambda *a: None, on_protocol=check, ablations=ablations)
    # per protocol: the recipe's bank (last block) and the block-0 variant's, once each
    # (none for the protocol that only scores the CNN)
    assert per_protocol and all(b == ([-1, 0] if spade else []) for b, spade in per_protocol)
    assert same and all(same.values()), same


def test_the_pretrained_run_scores_as_the_library_detector_on_the_same_models(tmp_path,
                                                                              monkeypatch):
    """recipe "pretrained": the one-class pretrained row ("patchcore"), the pretrained
    CNN-based row and SPADE's margin fusion; the fused scores are those of a SPADE built from
    the run's classifier, bank and held-out calibration, and its held-out normals are the ones
    SPADE.fit holds out."""
    import dataclasses

    import torch

    import spadecam.bench.pretrained as bm
    from spadecam import SPADE
    from spadecam.bench.configs import elpv_benchmark
    from spadecam.threshold import holdout_split

    root, split = fake_elpv(tmp_path)
    r = dataclasses.replace(elpv_benchmark("pretrained"), image_size=32,
                            spade_params={"patch_bank_size": 500})
    seen = {}
    real_fit = bm.fit_linear_head

    def keep(net, x, y, train, features):
        seen["cnn"] = real_fit(net, x, y, train, features)
        seen["n_train_normal"] = int((y == 0).sum())
        # the cached features are those train_cnn's regression would compute
        torch.testing.assert_close(features, bm.pooled_last_features(net, x, 64))
        return seen["cnn"]

    monkeypatch.setattr(bm, "fit_linear_head", keep)
    real_build = SPADE.build_patch_bank

    def keep_bank(self, x, valid=None):
        seen["bank"] = real_build(self, x, valid)
        return seen["bank"]

    monkeypatch.setattr(SPADE, "build_patch_bank", keep_bank)
    data = elpv_data(0, 32, "test", split, root)
    prot = next(p for p in data.protocols if p.name == "unseen_type")
    only = bm.BenchmarkData(data.x_normal, data.x_test, data.y_test, [prot])
    rows = bm.run_pretrained_benchmark(lambda seed: only, r, [0], progress=False,
                                       log=lambda *a: None)
    assert {q["method"] for q in rows} == {"patchcore", "one_class_pretrained", "cnn_pretrained",
                                           "spade_pretrained"}
    hold = holdout_split(torch.zeros(len(data.x_normal), dtype=torch.long), 0.1, 0)
    assert seen["n_train_normal"] == int((~hold).sum())
    # the same scores from the library's detector on the same models
    from spadecam.fusion import calibrate

    held, kept = data.x_normal[hold], data.x_normal[~hold]
    # the image-level bank (the recipe's knn_power 1) from the normals the models trained on
    det = SPADE.from_models(None, seen["cnn"], x_normal=kept, patch_bank=seen["bank"],
                            recipe="pretrained", image_size=32, precision="32")
    assert det.knn_ is not None and len(det.knn_.features) == len(kept)
    cal = det.calibrate(held)
    fused = det.decision_function(data.x_test.numpy())
    ref = {(q["protocol"], q["subset"]): q["auroc"] for q in rows
           if q["method"] == "spade_pretrained"}
    from spadecam.metrics import auroc

    for (pname, subset), idx in prot.columns.items():
        assert auroc(data.y_test[idx], fused[idx]) == pytest.approx(ref[(pname, subset)], abs=1e-9)
    # the one-class row is the same detector's score without the classifier's evidence
    det.set_params(evidence_weight=0.0)
    alone = det.decision_function(data.x_test.numpy())
    one_class = {(q["protocol"], q["subset"]): q["auroc"] for q in rows
                 if q["method"] == "one_class_pretrained"}
    for (pname, subset), idx in prot.columns.items():
        assert auroc(data.y_test[idx], alone[idx]) == pytest.approx(one_class[(pname, subset)],
                                                                    abs=1e-9)
    # the detector runs the backbone once for both parts (its head was fitted alone), the
    # benchmark twice: the same calibration to fp32 rounding
    from spadecam.knn import FeatureBank

    image_bank = FeatureBank(bm.pooled_last_features(seen["cnn"], kept, 64), -1, 5)
    d_held = image_bank(seen["cnn"], held, features=bm.pooled_last_features(seen["cnn"], held))
    want = calibrate(bm.max_feature_errors(seen["bank"], held),
                     bm.logit_differences(seen["cnn"], held), "held_out", d_held.numpy())
    assert (cal.n_images, cal.source, cal.knn_weight) == (want.n_images, want.source, 1.0)
    for k in ("error_mean", "error_std", "logit_mean", "logit_std", "knn_mean", "knn_std",
              "joint_std"):
        assert getattr(cal, k) == pytest.approx(getattr(want, k), rel=1e-5), k


def test_the_pretrained_run_needs_no_argument_beyond_the_data_and_refuses_ablations(tmp_path):
    """run_elpv's default recipe is "pretrained": called with no ablations argument it runs
    without them (it has no VAE to ablate); asked for them, it says so before any work."""
    from spadecam.bench.elpv import run_elpv

    root, split = fake_elpv(tmp_path)
    with pytest.raises(ValueError, match="ablations"):
        run_elpv(seeds=[0], ablations=True, root=root, split_file=split, log=lambda *a: None)
    import inspect

    assert inspect.signature(run_elpv).parameters["recipe"].default == "pretrained"
    assert inspect.signature(run_elpv).parameters["ablations"].default is None
