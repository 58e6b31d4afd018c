"""Reading own images: bit depths, modes, channel conversion, resize/letterbox, masks, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from _own_images import png_rgb16, save
from spadecam.data.images import (
    ImageError,
    image_hw,
    image_sizes,
    load_image,
    load_mask,
    read_image,
    read_images,
    to_channels,
)
from spadecam.preprocess import content_box, resize_image

RNG = np.random.default_rng(0)
GREY8 = RNG.integers(0, 256, (12, 20), dtype=np.uint8)
RGB8 = RNG.integers(0, 256, (12, 20, 3), dtype=np.uint8)
# 16-bit values that 8 bits cannot hold: neighbours differ by 1, and the top of the range
GREY16 = np.array(
    [[0, 1, 2, 255, 256, 257], [1000, 1001, 30000, 30001, 65534, 65535]], dtype=np.uint16
)


# --------------------------------------------------------------------------- bit depth


def test_8bit_grey_png_is_divided_by_255(tmp_path):
    x = read_image(save(tmp_path / "a.png", GREY8))
    assert x.dtype == np.float32 and x.shape == (1, 12, 20)
    np.testing.assert_array_equal(x[0], GREY8.astype(np.float32) / 255)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_grey_keeps_full_precision(tmp_path, suffix):
    x = read_image(save(tmp_path / f"depth{suffix}", GREY16))
    assert x.shape == (1, 2, 6) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], GREY16.astype(np.float32) / 65535)
    # neighbouring 16-bit levels stay distinct (8 bits would merge or clip them)
    assert len(np.unique(x)) == GREY16.size
    assert x.max() == 1.0 and x.min() == 0.0


def test_16bit_values_survive_resizing_and_channel_conversion(tmp_path):
    flat = np.full((8, 8), 1001, dtype=np.uint16)
    x = load_image(save(tmp_path / "d.png", flat), channels=3, size=16)
    assert x.shape == (3, 16, 16)
    np.testing.assert_allclose(x, 1001 / 65535, rtol=1e-6)


def test_16bit_colour_is_refused_not_clipped(tmp_path):
    path = png_rgb16(tmp_path / "rgb16.png", RNG.integers(0, 65536, (4, 4, 3)))
    with pytest.raises(ImageError, match="rgb16.png.*16-bit colour"):
        read_image(path)


# --------------------------------------------------------------------------- modes


def test_rgb_rgba_palette_jpeg_la_and_bilevel(tmp_path):
    rgb = read_image(save(tmp_path / "c.png", RGB8))
    np.testing.assert_array_equal(rgb, np.moveaxis(RGB8, -1, 0) / np.float32(255))
    rgba = np.dstack([RGB8, np.full((12, 20), 7, np.uint8)])
    np.testing.assert_array_equal(read_image(save(tmp_path / "c4.png", rgba)), rgb)  # alpha out
    pal = Image.fromarray(RGB8).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    xp = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(xp, read_image(save(tmp_path / "pc.png",
                                                      np.asarray(pal.convert("RGB")))))
    jpg = read_image(save(tmp_path / "j.jpg", RGB8, quality=95))
    assert jpg.shape == (3, 12, 20) and 0 <= jpg.min() and jpg.max() <= 1
    la = Image.fromarray(GREY8).convert("LA")
    la.save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png")[0], GREY8 / np.float32(255))
    Image.fromarray(GREY8 > 127).save(tmp_path / "b.png")
    assert set(np.unique(read_image(tmp_path / "b.png"))) <= {0.0, 1.0}


def test_channel_conversion_uses_pillow_luma_and_repeats_grey(tmp_path):
    grey = to_channels(read_image(save(tmp_path / "c.png", RGB8)), 1)
    pillow = np.asarray(Image.fromarray(RGB8).convert("L"), dtype=np.float32) / 255
    np.testing.assert_allclose(grey[0], pillow, atol=1 / 255 + 1e-6)
    three = to_channels(grey, 3)
    assert three.shape == (3, 12, 20) and (three == grey).all()
    with pytest.raises(ValueError, match="channels"):
        to_channels(grey, 2)


def test_unsupported_modes_are_named(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ImageError, match=r"float.tif.*unsupported image mode 'F'"):
        read_image(tmp_path / "float.tif")
    Image.fromarray(np.zeros((4, 4), np.int32)).save(tmp_path / "int32.tif")
    with pytest.raises(ImageError, match=r"int32.tif.*unsupported image mode 'I'"):
        read_image(tmp_path / "int32.tif")


# --------------------------------------------------------------------------- broken files


def test_corrupt_zero_byte_truncated_and_missing_files(tmp_path):
    good = save(tmp_path / "good.png", GREY8).read_bytes()
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "corrupt.png").write_bytes(b"this is not an image" * 5)
    (tmp_path / "trunc.png").write_bytes(good[: len(good) // 2])
    jpg = save(tmp_path / "full.jpg", RGB8).read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(jpg[: len(jpg) // 2])
    for name, why in [("zero.png", "empty"), ("corrupt.png", "cannot read"),
                      ("trunc.png", "truncated"), ("trunc.jpg", "truncated"),
                      ("missing.png", "no such file")]:
        with pytest.raises(ImageError, match=rf"(?i){name}.*{why}"):
            read_image(tmp_path / name)


# --------------------------------------------------------------------------- size policy


def test_resize_stretches_non_square_images():
    x = np.random.default_rng(1).random((1, 10, 30), dtype=np.float32)
    out = resize_image(x, 16, "resize")
    assert out.shape == (1, 16, 16) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    np.testing.assert_array_equal(resize_image(x[:, :, :10], 10), x[:, :, :10])  # no-op size


def test_letterbox_keeps_aspect_ratio_and_pads_with_zeros():
    x = np.full((3, 10, 30), 0.5, dtype=np.float32)  # wide: 3x as wide as high
    assert content_box(10, 30, 15, "letterbox") == (5, 0, 5, 15)
    out = resize_image(x, 15, "letterbox")
    assert out.shape == (3, 15, 15)
    np.testing.assert_allclose(out[:, 5:10], 0.5, rtol=1e-6)
    assert (out[:, :5] == 0).all() and (out[:, 10:] == 0).all()
    with pytest.raises(ValueError, match="resize policy"):
        resize_image(x, 15, "crop")


def test_mixed_sizes_load_into_one_batch(tmp_path):
    a = save(tmp_path / "a.png", GREY8)  # 20x12
    b = save(tmp_path / "b.png", RNG.integers(0, 256, (40, 33), dtype=np.uint8))
    sizes: list = []
    x = read_images([a, b], None, 24, "letterbox", sizes=sizes)
    assert [t.shape for t in x] == [(1, 24, 24)] * 2 and x[0].dtype == np.float32
    assert sizes == [(12, 20), (40, 33)] == image_sizes([a, b])
    own = read_images([a, b])  # without a size: each at its own
    assert [t.shape for t in own] == [(1, 12, 20), (1, 40, 33)]
    assert read_images([a, b], keep=False) == []


def test_masks_are_binary_after_nearest_resizing(tmp_path):
    m = np.zeros((12, 20), np.uint8)
    m[3:9, 5:15] = 255
    path = save(tmp_path / "m.png", m)
    assert image_hw(path) == (12, 20)
    native = load_mask(path)
    np.testing.assert_array_equal(native, (m > 0).astype(np.uint8))
    for policy in ("resize", "letterbox"):
        small = load_mask(path, 7, policy)
        assert small.shape == (7, 7) and set(np.unique(small)) == {0, 1}
    assert load_mask(path, 40, "letterbox")[:8].max() == 0  # padding rows are normal


# --------------------------------------------------------------------------- batch errors


def test_mixed_channel_counts_need_explicit_channels(tmp_path):
    g = save(tmp_path / "grey.png", GREY8)
    c = save(tmp_path / "colour.png", RGB8)
    with pytest.raises(ImageError, match=r"grey.png.*colour.png.*--channels"):
        read_images([g, c], None, 16)
    for channels in (1, 3):
        x = read_images([g, c], channels, 16)
        assert [t.shape for t in x] == [(channels, 16, 16)] * 2


def test_image_smaller_than_network_minimum_is_named(tmp_path):
    tiny = save(tmp_path / "tiny.png", GREY8[:8, :8])
    ok = save(tmp_path / "ok.png", GREY8[:, :16])  # 16 x 12: above a minimum of 12
    with pytest.raises(ImageError, match=r"tiny.png.*8x8.*minimum of 12x12"):
        read_images([ok, tiny], 1, 32, min_size=12)
    with pytest.raises(ImageError, match=r"tiny.png.*8x8.*minimum of 12x12"):
        image_sizes([ok, tiny], min_size=12)  # the headers alone (spadecam train's sizing)


# --------------------------------------------------------------------------- read as displayed


def with_orientation(image: Image.Image, path, orientation: int, **kw):
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, **kw)
    return path


# Pillow's transposes that display an image stored with each EXIF orientation (TIFF 6.0)
SHOWN = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud,
         5: lambda a: np.rot90(np.fliplr(a)), 6: lambda a: np.rot90(a, -1),
         7: lambda a: np.rot90(np.fliplr(a), -1), 8: np.rot90}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_exif_orientation_is_applied_to_images_and_masks(tmp_path, orientation, fmt):
    stored = RNG.integers(0, 256, (4, 6), dtype=np.uint8)  # 6 wide, 4 high as stored
    path = with_orientation(Image.fromarray(stored), tmp_path / f"o.{fmt}", orientation)
    shown = SHOWN[orientation](stored)
    np.testing.assert_array_equal(read_image(path)[0], shown / np.float32(255))
    assert image_hw(path) == shown.shape
    mask = with_orientation(Image.fromarray((stored > 127).astype(np.uint8) * 255),
                            tmp_path / f"m.{fmt}", orientation)
    np.testing.assert_array_equal(load_mask(mask), (shown > 127).astype(np.uint8))


def test_a_phone_jpeg_stored_sideways_scores_like_its_rotated_copy(tmp_path):
    # a 300x200 JPEG with Orientation 6 is displayed 200x300; it used to be read unrotated
    picture = np.zeros((300, 200), np.uint8)
    picture[20:60, 20:60] = 255  # the defect at the top left as displayed
    stored = np.rot90(picture)  # what the camera wrote: 300 wide, 200 high
    jpg = with_orientation(Image.fromarray(stored), tmp_path / "phone.jpg", 6, quality=100)
    assert Image.open(jpg).size == (300, 200)
    upright = save(tmp_path / "upright.jpg", picture, quality=100)
    x, y = read_image(jpg), read_image(upright)
    assert x.shape == y.shape == (1, 300, 200) and image_hw(jpg) == (300, 200)
    assert np.abs(x - y).max() < 0.1  # the same picture, up to JPEG rounding
    assert x[0, 20:60, 20:60].mean() > 0.9
    mask = with_orientation(Image.fromarray((stored > 0).astype(np.uint8)), tmp_path / "m.png", 6)
    assert load_mask(mask).shape == (300, 200)  # a mask drawn on the shown image fits it


def test_grey_palette_pngs_count_as_one_channel(tmp_path):
    grey_pal = Image.fromarray(GREY8).convert("P")  # Pillow's grey ramp palette
    grey_pal.save(tmp_path / "grey_p.png")
    save(tmp_path / "plain_l.png", GREY8)
    x = read_image(tmp_path / "grey_p.png")
    assert x.shape == (1, 12, 20)
    np.testing.assert_array_equal(x[0], GREY8 / np.float32(255))
    batch = read_images([tmp_path / "grey_p.png", tmp_path / "plain_l.png"], None, 8)
    assert [t.shape for t in batch] == [(1, 8, 8)] * 2  # used to fail "mixed channel counts"
    with_alpha = Image.fromarray(GREY8).convert("P")
    with_alpha.info["transparency"] = 0
    with_alpha.save(tmp_path / "grey_pt.png", transparency=0)
    assert read_image(tmp_path / "grey_pt.png").shape == (1, 12, 20)
    colour_pal = Image.fromarray(RGB8).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    colour_pal.save(tmp_path / "colour_p.png")
    assert read_image(tmp_path / "colour_p.png").shape == (3, 12, 20)


def test_a_broken_symbolic_link_is_named_as_such(tmp_path):
    (tmp_path / "dangling.png").symlink_to(tmp_path / "missing.png")
    with pytest.raises(ImageError, match=r"dangling.png: broken symbolic link .*missing.png"):
        read_image(tmp_path / "dangling.png")


def test_every_unusable_file_is_listed_in_one_error(tmp_path):
    good = [save(tmp_path / f"ok{i}.png", GREY8) for i in range(3)]
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"not an image" * 4)
    save(tmp_path / "tiny.png", np.zeros((2, 2), np.uint8))
    bad = [tmp_path / "zero.png", tmp_path / "junk.png", tmp_path / "tiny.png"]
    with pytest.raises(ImageError) as exc:
        read_images([good[0], bad[0], good[1], bad[1], bad[2], good[2]], None, 8, min_size=4)
    text = str(exc.value)
    assert text.startswith("3 of 6 images cannot be used")
    assert all(str(p) in text for p in bad) and not any(str(p) in text for p in good)
    assert exc.value.paths == [str(p) for p in bad]
