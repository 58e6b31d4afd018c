"""Property test: any image file a user may hold gives a score and a map, or a clear error.

Hypothesis writes one file per example — modes L, I;16, I;16B, LA, P (with and without
transparency), RGB, RGBA and CMYK JPEG, 1x1 to 2000x30 pixels either way round, every EXIF
orientation, and zero-byte or truncated copies — and runs ``spadecam score`` on it with a CSV
and overlays. Each run must end in one of two ways: exit 0 with one row whose score is finite
and one overlay of the model's input size, or exit 2 with ``spadecam: error:`` naming the file
and nothing written. Never a traceback, never a partial output.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from spadecam import SPADE
from spadecam.cli import main
from spadecam.data.images import image_hw

pytestmark = pytest.mark.usefixtures("single_thread")

# mode -> file formats Pillow writes it in
FORMATS = {
    "L": ["png", "tif", "jpg", "bmp"],
    "I;16": ["png", "tif"],
    "I;16B": ["tif"],
    "LA": ["png"],
    "P": ["png", "tif", "bmp"],
    "P+transparency": ["png"],
    "RGB": ["png", "jpg", "tif"],
    "RGBA": ["png", "tif"],
    "CMYK": ["jpg"],
}


def make_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I;16B"):
        dtype = "<u2" if mode == "I;16" else ">u2"
        return Image.fromarray(rng.integers(0, 65536, (height, width)).astype(dtype))
    if mode == "LA":
        return Image.fromarray(rng.integers(0, 256, (height, width, 2), dtype=np.uint8), "LA")
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode.startswith("P"):
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return rgb.convert(mode)  # L, RGB, RGBA, CMYK


PAIRS = [(mode, fmt) for mode, formats in FORMATS.items() for fmt in formats]


@st.composite
def image_files(draw, mode: str, fmt: str):
    # below the networks' 16-pixel minimum in about a quarter of the examples
    too_small = draw(st.sampled_from([False, False, False, True]))
    long_side = draw(st.integers(1 if too_small else 16, 2000))
    short_side = draw(st.integers(1, 15) if too_small else st.integers(16, 30))
    width, height = (long_side, short_side) if draw(st.booleans()) else (short_side, long_side)
    orientation = draw(st.sampled_from([None, 1, 2, 3, 4, 5, 6, 7, 8]))
    damage = draw(st.sampled_from(["none", "none", "none", "zero-byte", "truncated"]))
    cut = draw(st.floats(0.05, 0.95))
    seed = draw(st.integers(0, 2**16))
    return mode, fmt, width, height, orientation, damage, cut, seed


def write(spec, folder: Path) -> Path:
    mode, fmt, width, height, orientation, damage, cut, seed = spec
    im = make_image(mode, width, height, seed)
    kwargs = {}
    if mode == "P+transparency":
        kwargs["transparency"] = 0
    if orientation is not None and fmt != "bmp":
        exif = im.getexif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    buf = io.BytesIO()
    im.save(buf, format={"tif": "TIFF", "jpg": "JPEG"}.get(fmt, fmt.upper()), **kwargs)
    data = buf.getvalue()
    if damage == "zero-byte":
        data = b""
    elif damage == "truncated":
        data = data[: max(1, int(len(data) * cut))]
    path = folder / f"in put {mode.replace(';', '_')}.{fmt}"  # a space: names survive as given
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("mode, fmt", PAIRS)
@settings(max_examples=5, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_image_file_gives_a_finite_score_and_map_or_a_clear_error(tiny_model, mode, fmt,
                                                                      data):
    spec = data.draw(image_files(mode, fmt))
    model = tiny_model[0]
    det = SPADE.load(model)
    # a model with an input side resizes every image to it: any file size is taken, as by fit
    min_side = 1 if det.image_size_ else det.preprocessing_["min_input_size"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = write(spec, tmp)
        out, maps = tmp / "out" / "scores.csv", tmp / "maps"
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(["score", str(model), str(path), "--out", str(out), "--maps",
                         str(maps), "--no-progress"])
        err = stderr.getvalue()
        assert "Traceback" not in err and "Traceback" not in stdout.getvalue()
        _, _, width, height, _, damage, _, _ = spec
        must_fail = damage == "zero-byte" or min(width, height) < min_side
        must_work = damage == "none" and min(width, height) >= min_side
        event(f"exit {code}, {spec[0]} {spec[1]}, {damage}")
        if code == 0:
            assert not must_fail, err
            with open(out, newline="") as f:
                rows = list(csv.DictReader(f))
            assert len(rows) == 1 and rows[0]["path"] == str(path)
            assert math.isfinite(float(rows[0]["score"])) and rows[0]["label"] in ("0", "1")
            overlay = Image.open(rows[0]["map"])
            # the overlay is at the image's own size as displayed, not the model's
            h, w = image_hw(path)
            assert overlay.size == (w, h) and overlay.mode == "RGB"
        else:
            assert not must_work, err
            assert code == 2, err
            assert "spadecam: error:" in err and str(path) in err, err
            assert not out.exists() and not out.parent.exists() and not maps.exists()
