"""One 2-process DDP run on the CPU for tests/test_distributed.py (gloo backend).

    python tests/_ddp_worker.py OUT_DIR DATA_DIR SCORE_MODEL_DIR SCORE_INPUT_DIR

Started once by the test; ``spadecam.distributed.launch(devices=2)`` then starts rank 1 by
running this same command line again (Fabric's subprocess launcher, exactly what
``spadecam train --devices 2`` does). Each rank:

1. trains the tiny CNN (with and without batch norm) and VAE under DDP on a real-MNIST
   slice (tests/_ddp_data.py) and writes its own weights to OUT_DIR/rank{r}_{name}.safetensors,
   so the test can compare ranks with each other and with one process;
2. runs ``spadecam train --devices 2 ...`` on MNIST PNG folders (only rank 0 may write);
3. runs ``spadecam score --devices 2 ...`` (sharded scoring) into OUT_DIR/scores_ddp.csv,
   then on a folder whose last image (in rank 1's shard) is corrupt, and writes its exit
   code to OUT_DIR/bad_rank{r}.txt;
4. runs ``spadecam evaluate --devices 2 ... --masks`` into OUT_DIR/metrics_ddp.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _ddp_data import (  # noqa: E402
    BATCH,
    VAE_LR,
    cnn_config,
    mnist_slice,
    train_config,
    vae_config,
)
from spadecam.cli import main  # noqa: E402
from spadecam.distributed import launch  # noqa: E402
from spadecam.training import train_cnn, train_vae  # noqa: E402

DDP = dict(accelerator="cpu", devices=2, strategy="ddp")


def run(out: Path, data: Path, score_model: Path, score_inputs: Path) -> None:
    torch.set_num_threads(1)
    rank = launch(**DDP).global_rank  # rank 0 starts rank 1 here
    x, y = mnist_slice(data)
    cfg = train_config(BATCH, **DDP)
    models = {
        "cnn": train_cnn(x, y, cnn_config(batch_norm=False), cfg),
        "cnn_bn": train_cnn(x, y, cnn_config(batch_norm=True), cfg),
        "vae": train_vae(x[y == 0], vae_config(), train_config(BATCH, VAE_LR, **DDP)),
    }
    for name, model in models.items():
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(out / f"rank{rank}_{name}.safetensors"))
    flags = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    assert main([
        "train", "--recipe", "spadecam", "--normal", str(out.parent / "png" / "normal"), "--anomaly",
        str(out.parent / "png" / "anomaly"), "--out", str(out / "model_cli"),
        "--image-size", "28", "--latent-dim", "4", "--batch-size", "8", "--epochs", "1",
        "--no-progress", *flags,
    ]) == 0
    assert main([
        "score", str(score_model), str(score_inputs), "--out", str(out / "scores_ddp.csv"),
        "--maps", str(out / "maps_ddp"), "--no-progress", *flags,
    ]) == 0
    # a corrupt image in rank 1's shard only: both ranks must fail, and nothing be written
    rc = main(["score", str(score_model), str(score_inputs.parent / "inputs_bad"), "--out",
               str(out / "bad.csv"), "--no-progress", *flags])
    (out / f"bad_rank{rank}.txt").write_text(str(rc))
    png = out.parent / "png"
    assert main([
        "evaluate", str(score_model), "--normal", str(png / "normal"), "--anomaly",
        str(png / "anomaly"), "--masks", str(png / "masks"), "--out",
        str(out / "metrics_ddp.json"), "--no-progress", *flags,
    ]) == 0


if __name__ == "__main__":
    run(*(Path(a) for a in sys.argv[1:5]))
