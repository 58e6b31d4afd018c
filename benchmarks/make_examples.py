"""Run the own-images walk-through on the current code and write its output into the docs.

    python benchmarks/make_examples.py          # make examples: rewrites docs/own-images.md's
                                                # ``own-images-example`` block (a few minutes)
    python benchmarks/make_examples.py --print  # prints the block only

The example images are generated here (seeded): 64x64 grey textures; ``good/`` 120 normal ones,
``scratch/`` 40 with a bright scratch (the known anomaly); ``test/good`` 30, ``test/bad`` 15
scratches and 15 dark spots (a kind never shown in training) with masks in ``test/masks``. The
commands are run as a user runs them (``spadecam ...`` in a fresh process, in a temporary
folder), and their output is copied as printed, so the docs cannot show what the code no
longer prints. The block records the spadecam version, the CPU kind and the run time.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tables import main  # noqa: E402

from spadecam import __version__  # noqa: E402

SIZE = 64


def _texture(rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(0, 1, (SIZE // 4, SIZE // 4))
    x = np.kron(x, np.ones((4, 4)))  # blocky texture, 4 px cells
    x = 110 + 25 * x + rng.normal(0, 6, (SIZE, SIZE))
    return x


def _save(path: Path, x: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(path)


def _scratch(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    m = np.zeros_like(x, dtype=bool)
    r, c, n = rng.integers(8, SIZE - 24), rng.integers(8, SIZE - 24), rng.integers(12, 20)
    for i in range(n):  # a bright diagonal line, 2 px wide
        m[r + i, c + i : c + i + 2] = True
    x = x.copy()
    x[m] = 245
    return x, m


def _spot(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r, c, rad = rng.integers(12, SIZE - 12), rng.integers(12, SIZE - 12), rng.integers(4, 7)
    m = (yy - r) ** 2 + (xx - c) ** 2 <= rad ** 2
    x = x.copy()
    x[m] = 25
    return x, m


def make_images(root: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(120):
        _save(root / "good" / f"g{i:03d}.png", _texture(rng))
    for i in range(40):
        _save(root / "scratch" / f"s{i:03d}.png", _scratch(rng, _texture(rng))[0])
    for i in range(30):
        _save(root / "test" / "good" / f"g{i:03d}.png", _texture(rng))
    for kind, make in (("scratch", _scratch), ("spot", _spot)):
        for i in range(15):
            x, m = make(rng, _texture(rng))
            _save(root / "test" / "bad" / f"{kind}{i:02d}.png", x)
            _save(root / "test" / "masks" / f"{kind}{i:02d}_mask.png", 255 * m.astype(float))


COMMANDS = [
    "spadecam train --normal good --anomaly scratch --out model",
    "spadecam score model test/bad/scratch00.png test/bad/spot00.png test/good/g000.png "
    "--out scores.csv --maps overlays",
    "cat scores.csv",
    "spadecam evaluate model --normal test/good --anomaly test/bad --masks test/masks "
    "--out metrics.json",
]


def _cpu() -> str:
    import torch

    amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    kind = "AMX" if amx else ("AVX512-BF16, no AMX" if bf16 else "no bf16")
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {kind}"


def run() -> str:
    """The block: each command, its output as printed, the time it took."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_images(root)
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        for cmd in COMMANDS:
            t0 = time.perf_counter()
            argv = shlex.split(cmd)
            if argv[0] == "spadecam":
                argv = [sys.executable, "-m", "spadecam", *argv[1:], "--no-progress"]
            done = subprocess.run(argv, cwd=root, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise SystemExit(f"{cmd} failed:\n{done.stderr}")
            took = time.perf_counter() - t0
            text = (done.stderr + done.stdout).rstrip()
            out.append(f"    $ {cmd}" + (f"    # {took:.0f} s" if took >= 1 else ""))
            out += ["    " + line for line in text.splitlines()]
        metrics = json.loads((root / "metrics.json").read_text())
    keys = ("image_auroc", "image_average_precision", "image_f1_max", "pixel_auroc")
    excerpt = ", ".join(f'"{k}": {metrics[k]:.3f}' for k in keys)
    at = metrics.get("at_threshold") or {}
    excerpt2 = ", ".join(f'"{k}": {at[k]:.3f}' for k in ("precision", "recall",
                                                         "false_positive_rate") if k in at)
    return ("Generated by `make examples` (benchmarks/make_examples.py) with spadecam "
            f"{__version__} on {_cpu()}; `--no-progress` added to each command.\n\n"
            + "\n".join(out) + "\n\nExcerpt from `metrics.json`:\n\n"
            + f"    {excerpt},\n    \"at_threshold\": {{{excerpt2}, ...}}\n")


if __name__ == "__main__":
    main(lambda: {"own-images-example": run()}, "the example")
