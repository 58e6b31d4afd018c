"""Tests for spadecam.data: IDX reader, data-dir resolution, download, Noisy-MNIST."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import spadecam.data.mnist as mnist_mod
from spadecam.data import (
    PAYLOAD_SHA256,
    MNISTFormatError,
    MNISTNotFoundError,
    NoisyMNISTConfig,
    download_mnist,
    load_mnist,
    make_noisy_mnist,
    read_idx,
    resolve_data_dir,
)

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# --------------------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = struct.pack(">I", 0x800 | arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return head + arr.tobytes()


def fake_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, size=n, dtype=np.uint8),
    )


def write_split(folder: Path, split: str, n: int, seed: int, gz: bool) -> tuple:
    folder.mkdir(parents=True, exist_ok=True)
    imgs, labs = fake_split(n, seed)
    stems = mnist_mod.FILENAMES[split]
    for stem, arr in zip(stems, (imgs, labs), strict=True):
        data = idx_bytes(arr)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return imgs, labs


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """No SPADECAM_DATA, cwd without ../shared, empty cache and home."""
    monkeypatch.delenv("SPADECAM_DATA", raising=False)
    monkeypatch.delenv("SPADECAM_MNIST_URL", raising=False)
    work = tmp_path / "a" / "cwd"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdgcache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


# --------------------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(arr)
    p = tmp_path / ("x.idx.gz" if gz else "x.idx")
    p.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(p)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable
    lab = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    p1 = tmp_path / "lab"
    p1.write_bytes(idx_bytes(lab))
    np.testing.assert_array_equal(read_idx(p1, expected_ndim=1), lab)


def test_idx_truncated_payload(tmp_path):
    data = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    p = tmp_path / "trunc-images-idx3-ubyte"
    p.write_bytes(data[:-10])
    with pytest.raises(MNISTFormatError, match="trunc-images-idx3-ubyte") as ei:
        read_idx(p)
    assert "3136" in str(ei.value) and "3126" in str(ei.value)  # expected vs found


def test_idx_truncated_header_and_gzip(tmp_path):
    p = tmp_path / "short-header"
    p.write_bytes(struct.pack(">I", 2051) + struct.pack(">I", 5))
    with pytest.raises(MNISTFormatError, match="short-header"):
        read_idx(p)
    p2 = tmp_path / "tiny"
    p2.write_bytes(b"\x00\x00")
    with pytest.raises(MNISTFormatError, match="tiny"):
        read_idx(p2)
    gzd = gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8)))
    p3 = tmp_path / "cut.gz"
    p3.write_bytes(gzd[: len(gzd) // 2])
    with pytest.raises(MNISTFormatError, match="cut.gz"):
        read_idx(p3)
    p4 = tmp_path / "notgzip.gz"
    p4.write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(MNISTFormatError, match="notgzip.gz"):
        read_idx(p4)


def test_idx_wrong_magic(tmp_path):
    data = bytearray(idx_bytes(np.zeros((2, 28, 28), np.uint8)))
    p = tmp_path / "badmagic"
    bad = bytes([0x12, 0x34]) + bytes(data[2:])
    p.write_bytes(bad)
    with pytest.raises(MNISTFormatError, match="badmagic") as ei:
        read_idx(p)
    assert "0x12340803" in str(ei.value)
    # wrong dtype byte (0x0D = float32)
    data[2] = 0x0D
    p.write_bytes(bytes(data))
    with pytest.raises(MNISTFormatError, match="badmagic.*0x08"):
        read_idx(p)
    # labels file where images are expected: magic 2049 vs 2051
    p2 = tmp_path / "labels-as-images"
    p2.write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(MNISTFormatError, match="labels-as-images") as ei:
        read_idx(p2, expected_ndim=3)
    assert "2051" in str(ei.value) and "2049" in str(ei.value)


def test_idx_trailing_bytes(tmp_path):
    p = tmp_path / "trailing"
    p.write_bytes(idx_bytes(np.zeros((2, 28, 28), np.uint8)) + b"\x00")
    with pytest.raises(MNISTFormatError, match="trailing"):
        read_idx(p)


def test_idx_missing(tmp_path):
    with pytest.raises(MNISTNotFoundError, match="nope"):
        read_idx(tmp_path / "nope")
    assert issubclass(MNISTNotFoundError, FileNotFoundError)
    assert issubclass(MNISTFormatError, ValueError)


# --------------------------------------------------------------------------- load_mnist


@pytest.mark.parametrize("gz", [False, True])
def test_load_flat_layout(tmp_path, gz):
    imgs, labs = write_split(tmp_path, "test", 7, 1, gz)
    x, y = load_mnist("test", tmp_path)
    np.testing.assert_array_equal(x, imgs)
    np.testing.assert_array_equal(y, labs)


def test_load_torchvision_layout(tmp_path):
    imgs, labs = write_split(tmp_path / "MNIST" / "raw", "train", 5, 2, gz=True)
    x, y = load_mnist("train", tmp_path)
    assert x.shape == (5, 28, 28) and x.dtype == np.uint8 and y.dtype == np.uint8
    np.testing.assert_array_equal(x, imgs)
    np.testing.assert_array_equal(y, labs)


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_mnist("valid", tmp_path)
    with pytest.raises(MNISTNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist("test", tmp_path)
    # count mismatch
    stems = mnist_mod.FILENAMES["test"]
    (tmp_path / stems[0]).write_bytes(idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    (tmp_path / stems[1]).write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(MNISTFormatError, match="3 images.*4 labels"):
        load_mnist("test", tmp_path)
    # wrong image size
    (tmp_path / stems[0]).write_bytes(idx_bytes(np.zeros((4, 32, 32), np.uint8)))
    with pytest.raises(MNISTFormatError, match="28x28"):
        load_mnist("test", tmp_path)


def _real_dir() -> Path | None:
    env = os.environ.get("SPADECAM_DATA")
    if env and Path(env).is_dir():
        return Path(env)
    if SHARED_MNIST.is_dir():
        return SHARED_MNIST
    return None


def test_real_mnist_test_split():
    d = _real_dir()
    if d is None:
        pytest.skip("real MNIST not available (../shared/data/mnist or SPADECAM_DATA)")
    x, y = load_mnist("test", d)
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == TEST_COUNTS
    assert x.max() == 255 and x.min() == 0


# --------------------------------------------------------------------------- resolve_data_dir


def test_resolve_env_and_explicit(isolated_env, monkeypatch):
    d = isolated_env / "envdata"
    d.mkdir()
    monkeypatch.setenv("SPADECAM_DATA", str(d))
    assert resolve_data_dir() == d
    other = isolated_env / "explicit"
    other.mkdir()
    assert resolve_data_dir(other) == other  # explicit argument wins over env
    monkeypatch.setenv("SPADECAM_DATA", str(isolated_env / "missing"))
    with pytest.raises(MNISTNotFoundError, match="SPADECAM_DATA"):
        resolve_data_dir()
    with pytest.raises(MNISTNotFoundError, match="nothere"):
        resolve_data_dir(isolated_env / "nothere")


def test_resolve_error_lists_places(isolated_env):
    with pytest.raises(MNISTNotFoundError) as ei:
        resolve_data_dir()
    msg = str(ei.value)
    for needle in ("SPADECAM_DATA", "--data-dir", "--download", "shared", "xdgcache"):
        assert needle in msg, needle


def test_resolve_shared_then_cache(isolated_env):
    cache = isolated_env / "xdgcache" / "spadecam" / "mnist"
    write_split(cache, "train", 2, 0, gz=True)
    write_split(cache, "test", 2, 1, gz=True)
    assert resolve_data_dir() == cache
    shared = isolated_env / "a" / "shared" / "data" / "mnist"
    write_split(shared, "train", 2, 0, gz=False)
    write_split(shared, "test", 2, 1, gz=False)
    assert resolve_data_dir().resolve() == shared.resolve()


# --------------------------------------------------------------------------- download


def _fake_server(monkeypatch, n=3):
    """Serve gz bytes of tiny fake files; patch PAYLOAD_SHA256 to their hashes."""
    served, hashes, calls = {}, {}, []
    for k, split in enumerate(("train", "test")):
        imgs, labs = fake_split(n + k, 10 + k)
        for stem, arr in zip(mnist_mod.FILENAMES[split], (imgs, labs), strict=True):
            raw = idx_bytes(arr)
            served[stem + ".gz"] = gzip.compress(raw)
            hashes[stem] = hashlib.sha256(raw).hexdigest()

    def fetch(url, timeout=60.0):
        calls.append(url)
        return served[url.rsplit("/", 1)[1]]

    monkeypatch.setattr(mnist_mod, "_fetch", fetch)
    for stem, h in hashes.items():
        monkeypatch.setitem(PAYLOAD_SHA256, stem, h)
    return served, hashes, calls


def test_download_writes_and_verifies(isolated_env, monkeypatch):
    served, _hashes, calls = _fake_server(monkeypatch)
    monkeypatch.setenv("SPADECAM_MNIST_URL", "https://mirror.example/mnist")
    out = download_mnist()
    assert out == isolated_env / "xdgcache" / "spadecam" / "mnist"
    assert sorted(p.name for p in out.iterdir()) == sorted(served)
    assert len(calls) == 4 and all(u.startswith("https://mirror.example/mnist/") for u in calls)
    for name, gz in served.items():
        assert (out / name).read_bytes() == gz
    x, y = load_mnist("test", out)
    assert x.shape == (4, 28, 28) and y.shape == (4,)
    assert resolve_data_dir() == out  # cache is discovered
    # second call: everything present and verified -> no fetch
    calls.clear()
    download_mnist()
    assert calls == []
    # a corrupted file is re-downloaded and replaced
    stem = "t10k-labels-idx1-ubyte"
    (out / f"{stem}.gz").write_bytes(b"garbage")
    download_mnist(base_url="https://other.example/")
    assert calls == [f"https://other.example/{stem}.gz"]
    assert (out / f"{stem}.gz").read_bytes() == served[f"{stem}.gz"]


def test_download_hash_mismatch_leaves_nothing(isolated_env, monkeypatch):
    _served, hashes, _calls = _fake_server(monkeypatch)
    stem = "train-images-idx3-ubyte"  # first file fetched
    wrong = "0" * 64
    monkeypatch.setitem(PAYLOAD_SHA256, stem, wrong)
    cache = isolated_env / "dl"
    with pytest.raises(MNISTFormatError) as ei:
        download_mnist(cache)
    msg = str(ei.value)
    assert stem in msg and wrong in msg and hashes[stem] in msg
    assert list(cache.iterdir()) == []  # no file, no temp file


def test_download_bad_gzip(isolated_env, monkeypatch):
    _fake_server(monkeypatch)
    monkeypatch.setattr(mnist_mod, "_fetch", lambda url, timeout=60.0: b"<html>nope</html>")
    cache = isolated_env / "dl2"
    with pytest.raises(MNISTFormatError, match="gzip"):
        download_mnist(cache)
    assert list(cache.iterdir()) == []


def test_payload_hashes_constant():
    assert mnist_mod.PAYLOAD_SHA256["t10k-labels-idx1-ubyte"] == (
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
    )
    assert set(PAYLOAD_SHA256) == {s for pair in mnist_mod.FILENAMES.values() for s in pair}


# --------------------------------------------------------------------------- Noisy-MNIST


def _blob_digits(n: int, seed: int = 0) -> np.ndarray:
    """Digits that are fully 255 (bounding box = whole 28x28)."""
    del seed
    return np.full((n, 28, 28), 255, dtype=np.uint8)


def _rand_digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def test_noisy_shape_dtype():
    d = _rand_digits(6)
    out, sig = make_noisy_mnist(d, 0, return_sigma=True)
    assert out.shape == (6, 84, 84) and out.dtype == np.uint8
    assert sig.shape == (6,) and sig.dtype == np.float64 and (sig >= 0).all()
    empty = make_noisy_mnist(d[:0], 0)
    assert empty.shape == (0, 84, 84) and empty.dtype == np.uint8
    small = make_noisy_mnist(d[:2], 0, NoisyMNISTConfig(canvas_size=40, max_digit_size=40))
    assert small.shape == (2, 40, 40)


def test_noisy_determinism_and_slicing():
    d = _rand_digits(12)
    a = make_noisy_mnist(d, 7)
    b = make_noisy_mnist(d, 7)
    c = make_noisy_mnist(d, 8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert all(not np.array_equal(a[i], c[i]) for i in range(len(d)))
    np.testing.assert_array_equal(make_noisy_mnist(d[:5], 7), a[:5])
    np.testing.assert_array_equal(make_noisy_mnist(d[5:9], 7, start_index=5), a[5:9])
    # images differ from each other even for identical digits
    same = make_noisy_mnist(np.repeat(d[:1], 3, axis=0), 7)
    assert not np.array_equal(same[0], same[1])


def test_noisy_sigma_folded_normal():
    mu, sd, n = 40.0, 30.0, 4000
    cfg = NoisyMNISTConfig(canvas_size=28, max_digit_size=28)  # sigma law is canvas-independent
    _, sig = make_noisy_mnist(np.zeros((n, 28, 28), np.uint8), 123, cfg, return_sigma=True)
    phi = 0.5 * (1 + math.erf((-mu / sd) / math.sqrt(2)))
    mean_f = sd * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * sd**2)) + mu * (1 - 2 * phi)
    std_f = math.sqrt(mu**2 + sd**2 - mean_f**2)
    assert 42.0 < mean_f < 43.0  # ~42.54 for N(40, 30^2)
    se = std_f / math.sqrt(n)  # ~0.42
    assert abs(sig.mean() - mean_f) < 5 * se
    assert abs(sig.std() - std_f) < 1.5  # SE of the std is ~0.35 here
    assert (sig >= 0).all() and len(np.unique(sig)) == n
    # a fixed sigma when noise_std == 0, including negative means (|s|)
    _, s2 = make_noisy_mnist(np.zeros((5, 28, 28), np.uint8), 0,
                             NoisyMNISTConfig(canvas_size=28, max_digit_size=28, noise_mean=-12.5,
                                              noise_std=0.0), return_sigma=True)
    np.testing.assert_array_equal(s2, 12.5)


def _bbox(img: np.ndarray):
    rows, cols = np.nonzero(img)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def test_noisy_clean_placement_and_sizes():
    n = 2000
    clean_cfg = NoisyMNISTConfig(noise_mean=0.0, noise_std=0.0)
    out, sig = make_noisy_mnist(_blob_digits(n), 3, clean_cfg, return_sigma=True)
    assert (sig == 0).all()
    assert set(np.unique(out).tolist()) <= {0, 255}  # constant digit stays constant, no noise
    sizes, tops = [], []
    for img in out:
        r0, r1, c0, c1 = _bbox(img)
        h, w = r1 - r0, c1 - c0
        assert h == w and 28 <= h <= 84
        assert 0 <= r0 and r1 <= 84 and 0 <= c0 and c1 <= 84
        assert (img[r0:r1, c0:c1] == 255).all()
        sizes.append(h)
        tops.append(r0)
    sizes = np.array(sizes)
    assert sizes.min() == 28 and sizes.max() == 84  # inclusive bounds reached
    assert len(np.unique(sizes)) == 57
    assert 52 < sizes.mean() < 60  # uniform on 28..84 -> mean 56
    assert len(np.unique(tops)) > 20


@pytest.mark.parametrize("resample", ["bilinear", "bicubic", "nearest", "lanczos"])
def test_noisy_resample_variants(resample):
    d = _rand_digits(3)
    cfg = NoisyMNISTConfig(resample=resample, noise_mean=0.0, noise_std=0.0)
    out = make_noisy_mnist(d, 1, cfg)
    assert out.shape == (3, 84, 84) and out.max() > 0


@pytest.mark.parametrize("s", [15.0, 40.0])
def test_noisy_placement_independent_of_noise_and_background_stats(s):
    n = 60
    d = _rand_digits(n, 5)
    clean = make_noisy_mnist(d, 11, NoisyMNISTConfig(noise_mean=0.0, noise_std=0.0))
    noisy, sig = make_noisy_mnist(d, 11, NoisyMNISTConfig(noise_mean=s, noise_std=0.0),
                                  return_sigma=True)
    np.testing.assert_array_equal(sig, s)
    # with a different noise level the digit sits in the same place: the noisy image is
    # brighter where the clean one is bright
    bright = clean > 200
    assert noisy[bright].astype(float).mean() > 190
    bg = noisy[clean == 0].astype(np.float64)
    assert bg.size > 100_000
    # background = rint(clip(N(0, s^2), 0, 255)): mean s/sqrt(2 pi), E[x^2] = s^2/2
    assert abs(bg.mean() - s / math.sqrt(2 * math.pi)) < 0.5
    assert abs(math.sqrt(2 * (bg**2).mean()) - s) < 0.8
    p_zero = 0.5 * (1 + math.erf(0.5 / s / math.sqrt(2)))  # rint(x) == 0 iff x < 0.5
    assert abs((bg == 0).mean() - p_zero) < 0.01
    # residual over the digit region where clipping is negligible (mid-grey clean values)
    mid = (clean > 100) & (clean < 155)
    resid = noisy[mid].astype(np.float64) - clean[mid]
    assert mid.sum() > 2000
    assert abs(resid.std() - s) < 0.06 * s and abs(resid.mean()) < 0.06 * s


def test_config_validation():
    with pytest.raises(ValueError, match="min_digit_size"):
        NoisyMNISTConfig(min_digit_size=50, max_digit_size=40)
    with pytest.raises(ValueError, match="max_digit_size"):
        NoisyMNISTConfig(max_digit_size=100)
    with pytest.raises(ValueError, match="noise_std"):
        NoisyMNISTConfig(noise_std=-1.0)
    with pytest.raises(ValueError, match="noise_mean"):
        NoisyMNISTConfig(noise_mean=float("nan"))
    with pytest.raises(ValueError, match="resample"):
        NoisyMNISTConfig(resample="area")
    with pytest.raises(ValueError, match="canvas_size"):
        NoisyMNISTConfig(canvas_size=0)
    with pytest.raises(ValueError, match="min_digit_size"):
        NoisyMNISTConfig(min_digit_size=2.5)
    cfg = NoisyMNISTConfig()
    assert (cfg.canvas_size, cfg.min_digit_size, cfg.max_digit_size) == (84, 28, 84)
    assert (cfg.noise_mean, cfg.noise_std, cfg.resample) == (40.0, 30.0, "bilinear")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.canvas_size = 10  # frozen
    with pytest.raises(TypeError, match="noise_mean"):
        NoisyMNISTConfig(noise_mean="40")


def test_make_noisy_input_validation():
    with pytest.raises(ValueError, match="digits.*uint8"):
        make_noisy_mnist(np.zeros((2, 28, 28), np.float32), 0)
    with pytest.raises(ValueError, match="digits.*3 dimensions"):
        make_noisy_mnist(np.zeros((28, 28), np.uint8), 0)
    with pytest.raises(TypeError, match="digits"):
        make_noisy_mnist([[0]], 0)
    with pytest.raises(ValueError, match="seed"):
        make_noisy_mnist(np.zeros((1, 28, 28), np.uint8), -1)
    with pytest.raises(TypeError, match="config"):
        make_noisy_mnist(np.zeros((1, 28, 28), np.uint8), 0, {"canvas_size": 84})
