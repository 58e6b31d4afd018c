"""Scale-out on Lightning Fabric: a real 2-process DDP run on the CPU (gloo) against one process.

One 2-process run (tests/_ddp_worker.py, started the way ``spadecam train --devices 2``
starts its processes) trains tiny models on a real-MNIST slice, runs ``spadecam train``,
``spadecam score`` and ``spadecam evaluate`` with ``--devices 2``; the checks below compare
its outputs with each other and with the same work done in this single process.

What can be compared, and how closely:

* ranks with each other: bit-identical weights (rank 0's are broadcast at the end);
* the CNN without batch norm against one process with the same global batch (2 x 8 vs 16):
  the same images in every step and the gradient of the same mean, so only the float32
  summation order differs (DDP averages two half-batch gradients). Measured: at most
  1.5e-8 after the 8 steps; the bound 1e-5 leaves room for other CPUs' kernels, and is
  far below what one wrong or reordered batch would do (each Adam step moves a weight by
  up to lr = 1e-3; the check also asserts training moved them by more than 1e-3);
* the VAE: one sample of z per image and step is drawn per rank, so DDP and one process
  draw different noise and cannot agree bit for bit. Its ELBO after one epoch must agree
  within 2%: about the spread between two seeds of a one-process run (455 vs 448 nats);
  measured 0.1%, against a fall from 536 to 455 nats that the epoch brings;
* batch norm: statistics are per process under DDP (8 images, not 16), so the CNN with
  batch norm is only checked for identical weights across ranks, not against one process.

Scoring must give the single-process CSV: same rows in the same order, scores within
1e-5 (measured: identical), and the same overlay file names, under Fabric's own launcher,
torchrun and `fabric run`. Evaluation must give the single-process metrics (pixel AUROC
from the map pixels of both ranks), written and printed once.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from _ddp_data import BATCH, VAE_LR, cnn_config, mnist_dir, mnist_slice, train_config, vae_config
from spadecam import SPADE
from spadecam.cli import main
from spadecam.data import load_mnist
from spadecam.distributed import fabric_settings, gather_in_order, rank_seed, shard
from spadecam.models.vae import negative_elbo
from spadecam.precision import resolve_training_precision
from spadecam.training import train_cnn, train_vae

#: Real 2-process runs: the whole module is slow (`make test-fast` leaves it out).
pytestmark = pytest.mark.slow

DATA = mnist_dir()
needs_mnist = pytest.mark.skipif(DATA is None, reason="MNIST not found (set SPADECAM_DATA)")
WORKER = Path(__file__).with_name("_ddp_worker.py")
#: Launcher variables that must not leak from the environment of the test run.
_LAUNCH_VARS = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "LT_CLI_USED", "TORCHELASTIC_RUN_ID")


# --------------------------------------------------------------------------- pure helpers


def test_shards_cover_the_inputs_in_order():
    for n in (0, 1, 5, 37):
        for world in (1, 2, 3, 8):
            parts = [shard(n, r, world) for r in range(world)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError):
        shard(3, 2, 2)


def test_gather_without_processes_is_the_identity():
    a = np.arange(5.0)
    assert gather_in_order(None, a, 5) is a


def test_fabric_settings_follow_the_launcher():
    plain = fabric_settings(env={})
    assert plain == dict(accelerator="cpu", devices=1, strategy="auto", num_nodes=1,
                         precision=resolve_training_precision("auto", "cpu"))
    assert fabric_settings(precision="32", env={})["precision"] == "32-true"
    torchrun = dict(RANK="3", GROUP_RANK="1", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2",
                    WORLD_SIZE="4")
    s = fabric_settings(env=torchrun)
    assert (s["devices"], s["num_nodes"]) == (2, 2)
    assert fabric_settings(devices=2, accelerator="cuda", env=torchrun)["accelerator"] == "cuda"
    # under `fabric run` unset values stay Fabric's defaults so that its LT_* values apply
    s = fabric_settings(env={"LT_CLI_USED": "1", **torchrun})
    assert (s["accelerator"], s["devices"], s["precision"]) == ("auto", "auto", None)
    with pytest.raises(ValueError, match="precision"):
        fabric_settings(precision="8", env={})
    with pytest.raises(ValueError, match="--devices"):
        fabric_settings(devices=0, env={})


def test_rank_seeds_keep_rank_zero_and_differ_elsewhere():
    assert rank_seed(7, 0) == 7
    seeds = {rank_seed(s, r) for s in range(4) for r in range(4)}
    assert len(seeds) == 16


def test_cli_options_reach_fabric():
    from spadecam.cli import _build_parser, _distributed

    args = _build_parser().parse_args([
        "train", "--normal", "n", "--anomaly", "a", "--out", "m", "--accelerator", "cuda",
        "--devices", "4", "--strategy", "ddp", "--num-nodes", "2", "--precision", "bf16-mixed",
    ])
    assert _distributed(args) == dict(accelerator="cuda", devices=4, strategy="ddp",
                                      num_nodes=2, precision="bf16-mixed")
    args = _build_parser().parse_args(["score", "m", "x.png", "--precision", "32"])
    assert _distributed(args) == {}  # all from the launcher, or one process
    assert args.precision == "32"  # score's --precision is the scoring precision
    with pytest.raises(SystemExit):  # a training precision is not a scoring one
        _build_parser().parse_args(["score", "m", "x.png", "--precision", "bf16-mixed"])


def test_reproduce_keeps_the_recipe_global_batch():
    from spadecam.bench.configs import noisy_mnist_benchmark
    from spadecam.bench.runner import _per_process_batch

    r = noisy_mnist_benchmark("paper")
    split = _per_process_batch(r, 4)
    assert (split.vae_train.batch_size, split.cnn_train.batch_size) == (
        r.vae_train.batch_size // 4, r.cnn_train.batch_size // 4)
    with pytest.raises(ValueError, match="split evenly"):
        _per_process_batch(r, 3)


# --------------------------------------------------------------------------- one DDP run


def _save_png(path: Path, digit: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(digit).save(path)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run(tmp_path_factory, single_thread):
    """Single-process models, the inputs of the DDP run, then the DDP run itself."""
    if DATA is None:
        pytest.skip("MNIST not found (set SPADECAM_DATA)")
    root = tmp_path_factory.mktemp("ddp")
    x, y = mnist_slice(DATA)
    one = train_config(2 * BATCH)  # one process, the global batch of 2 ranks x BATCH
    single = {
        "cnn": train_cnn(x, y, cnn_config(batch_norm=False), one),
        "vae": train_vae(x[y == 0], vae_config(), train_config(2 * BATCH, VAE_LR)),
    }
    # a model directory to score with (single-process models) and 37 PNGs of several digits,
    # an odd number so that the two shards differ in length
    xt, yt = load_mnist("test", DATA)
    det = SPADE.from_models(single["vae"], single["cnn"], resize="resize", knn_power=0.0,
        recipe="spadecam")  # as pre says
    det.threshold_ = float(np.median(det.decision_function(xt[1000:1037])))
    pre = {"image_size": 28, "channels": 1, "resize": "resize", "normalisation": "dtype_max",
           "min_input_size": 4}
    det.save(root / "score_model", pre, {"overlay_scale": 1.0})
    for i in range(1000, 1037):
        _save_png(root / "inputs" / f"t{i:05d}_{yt[i]}.png", xt[i])
    for i in range(5):
        _save_png(root / "inputs_bad" / f"t{i}.png", xt[i])
    (root / "inputs_bad" / "z_corrupt.png").write_bytes(b"not a png")
    for i in range(24):
        _save_png(root / "png" / "normal" / f"n{i}.png", xt[np.flatnonzero(yt == 0)[200 + i]])
    for i in range(13):  # 24 + 13 = 37 images to evaluate: shards of 19 and 18
        digit = xt[np.flatnonzero(yt == 1)[200 + i]]
        _save_png(root / "png" / "anomaly" / f"a{i}.png", digit)
        if i < 11:  # masks for all but two anomalies (left out of pixel AUROC, named)
            _save_png(root / "png" / "masks" / f"a{i}.png", (digit > 127).astype(np.uint8) * 255)
    out = root / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out), str(DATA), str(root / "score_model"),
         str(root / "inputs")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"root": root, "out": out, "single": single, "x": x, "y": y,
            "log": proc.stdout + proc.stderr}


@needs_mnist
def test_ddp_weights_are_identical_on_both_ranks(run):
    for name in ("cnn", "cnn_bn", "vae"):
        a = load_file(run["out"] / f"rank0_{name}.safetensors")
        b = load_file(run["out"] / f"rank1_{name}.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


@needs_mnist
def test_ddp_cnn_matches_one_process_with_the_same_global_batch(run):
    ddp = load_file(run["out"] / "rank0_cnn.safetensors")
    one = run["single"]["cnn"].state_dict()
    for k, v in one.items():
        diff = (ddp[k] - v).abs().max().item()
        assert diff < 1e-5, (k, diff)
    # and training did move them by far more than that (1 epoch, lr 1e-3, 8 steps)
    torch.manual_seed(0)
    fresh = type(run["single"]["cnn"])(cnn_config(batch_norm=False)).state_dict()
    assert max((fresh[k] - v).abs().max().item() for k, v in one.items()) > 1e-3


@needs_mnist
def test_ddp_vae_elbo_is_close_to_one_process(run):
    from spadecam.models.vae import ConvVAE

    x = run["x"][run["y"] == 0].float().div(255)

    def elbo(model) -> float:
        with torch.no_grad():
            logits, mu, logvar = model.eval()(x, sample=False)
            return float(negative_elbo(logits, x, mu, logvar))

    one = elbo(run["single"]["vae"])
    ddp_model = ConvVAE(vae_config())
    ddp_model.load_state_dict(load_file(run["out"] / "rank0_vae.safetensors"))
    ddp = elbo(ddp_model)
    torch.manual_seed(0)
    untrained = elbo(ConvVAE(vae_config()))
    assert abs(ddp - one) <= 0.02 * one, (ddp, one)
    assert untrained - one > 10 * abs(ddp - one), (untrained, one, ddp)


@needs_mnist
def test_cli_train_on_two_processes_writes_one_loadable_model(run):
    model = run["out"] / "model_cli"
    assert sorted(p.name for p in model.iterdir()) == [
        "cnn.safetensors", "config.json", "knn.safetensors", "vae.safetensors"
    ]
    det = SPADE.load(model)
    import json

    training = json.loads((model / "config.json").read_text())["training"]
    assert training["world_size"] == 2 and training["global_batch_size"] == 16
    assert det.threshold_ is not None
    assert run["log"].count("model written to") == 1  # rank 0 reports for both


@needs_mnist
def test_sharded_scoring_gives_the_single_process_csv(run, tmp_path):
    root = run["root"]
    csv1, maps1 = tmp_path / "scores.csv", tmp_path / "maps"
    assert main(["score", str(root / "score_model"), str(root / "inputs"), "--out", str(csv1),
                 "--maps", str(maps1), "--no-progress"]) == 0
    one, ddp = _read_csv(csv1), _read_csv(run["out"] / "scores_ddp.csv")
    assert len(one) == 37
    assert [r["path"] for r in ddp] == [r["path"] for r in one]
    assert [r["label"] for r in ddp] == [r["label"] for r in one]
    s1 = np.array([float(r["score"]) for r in one])
    s2 = np.array([float(r["score"]) for r in ddp])
    np.testing.assert_allclose(s2, s1, rtol=1e-5, atol=1e-5)
    assert 0 < sum(int(r["label"]) for r in one) < 37  # the threshold splits them
    assert sorted(p.relative_to(run["out"] / "maps_ddp") for p in
                  (run["out"] / "maps_ddp").rglob("*.png")) == sorted(
        p.relative_to(maps1) for p in maps1.rglob("*.png")
    )
    assert len(list(maps1.rglob("*.png"))) == 37


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@needs_mnist
@pytest.mark.parametrize("launcher", ["torchrun", "fabric run"])
def test_scoring_under_an_external_launcher(run, launcher, tmp_path):
    """torchrun / `fabric run` start both processes; spadecam takes its settings from them."""
    root = run["root"]
    args = ["score", str(root / "score_model"), str(root / "inputs"), "--out",
            str(tmp_path / "scores.csv"), "--no-progress"]
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "spadecam", *args]
    else:  # what `fabric run --accelerator cpu --devices 2 --strategy ddp` runs (minus click)
        script = Path(sys.executable).with_name("spadecam")
        if not script.is_file():
            pytest.skip("no spadecam console script next to the Python executable")
        call = ("import sys; from argparse import Namespace; from lightning.fabric.cli import "
                "main; main(Namespace(script=sys.argv[1], accelerator='cpu', strategy='ddp', "
                "devices='2', num_nodes=1, node_rank=0, main_address='127.0.0.1', "
                f"main_port={_free_port()}, precision=None), sys.argv[2:])")
        cmd = [sys.executable, "-c", call, str(script), *args]
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the same rows as the run with --maps, whose map column names the overlays
    ddp = [{**r, "map": ""} for r in _read_csv(run["out"] / "scores_ddp.csv")]
    assert _read_csv(tmp_path / "scores.csv") == ddp
    assert proc.stdout.count("scored 37 images") == 1


@needs_mnist
def test_sharded_evaluation_gives_the_single_process_metrics(run, tmp_path, capsys):
    import json

    root = run["root"]
    one_json = tmp_path / "metrics.json"
    assert main(["evaluate", str(root / "score_model"), "--normal",
                 str(root / "png" / "normal"), "--anomaly", str(root / "png" / "anomaly"),
                 "--masks", str(root / "png" / "masks"), "--out", str(one_json),
                 "--no-progress"]) == 0
    assert "2 anomalous image(s) have no mask" in capsys.readouterr().err
    one = json.loads(one_json.read_text())
    ddp = json.loads((run["out"] / "metrics_ddp.json").read_text())
    assert one["n_images"] == 37 and one["n_pixel_images"] == 24 + 11
    assert ddp.keys() == one.keys()
    assert ddp["n_pixel_images"] == one["n_pixel_images"]
    assert ddp["pixel_auroc_missing_masks"] == one["pixel_auroc_missing_masks"]
    assert len(one["pixel_auroc_missing_masks"]) == 2
    # strictly between 0 and 1: a value that only rank 0's pixels, or a misordered gather,
    # would move (measured 0.16: the maps light up the strokes of the normal 0s as well)
    assert 0.0 < one["pixel_auroc"] < 1.0
    for key, value in one.items():
        if isinstance(value, float):
            assert ddp[key] == pytest.approx(value, abs=1e-6), key
        elif key != "model_dir":
            assert ddp[key] == value, key
    # rank 0 alone wrote, warned and printed: no "replacing" warning from a second writer
    assert run["log"].count("image AUROC") == 1
    assert run["log"].count("left out of pixel AUROC") == 1
    assert "replacing the existing file" not in run["log"]


@needs_mnist
def test_a_bad_image_in_one_shard_stops_every_process_before_any_write(run):
    assert [(run["out"] / f"bad_rank{r}.txt").read_text() for r in (0, 1)] == ["2", "2"]
    assert not (run["out"] / "bad.csv").exists()
    assert run["log"].count("z_corrupt.png") >= 2  # each process names the file


def test_one_process_scoring_does_without_lightning(tiny_model, tmp_path, monkeypatch):
    """`spadecam score` / `evaluate` in one CPU process never import Lightning (3.2-3.4 s of
    imports, 4 ms per image on 1,000 images): launch_scoring gives a OneProcess there, whose
    collectives are the identity; under `fabric run` or with several devices it is Fabric."""
    from spadecam.distributed import OneProcess, launch_scoring

    for var in ("LT_CLI_USED", "RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    one = launch_scoring()
    assert isinstance(one, OneProcess) and (one.global_rank, one.world_size) == (0, 1)
    assert one.device.type == "cpu"
    t = torch.tensor(3.0)
    assert one.all_reduce(t, reduce_op="max") is t and one.broadcast(7, src=0) == 7
    assert isinstance(launch_scoring(accelerator="cpu", devices=1), OneProcess)
    model, folders = tiny_model
    code = ("import sys\nfrom spadecam import workflow\n"
            f"rows = workflow.score({str(model)!r}, [{str(folders['test/good'])!r}], "
            f"out={str(tmp_path / 's.csv')!r}, maps={str(tmp_path / 'ov')!r}, progress=False)\n"
            f"workflow.evaluate({str(model)!r}, [{str(folders['test/good'])!r}], "
            f"[{str(folders['test/defect'])!r}], progress=False)\n"
            "print(len(rows), any(m.startswith('lightning') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={k: v for k, v in os.environ.items()
                                          if k != "LT_CLI_USED"})
    n, imported = out.stdout.split()[-2:]
    assert int(n) == 3 and imported == "False"
