"""Finding images: plain folder layout (with masks matched by stem) and the MVTec AD layout."""

from __future__ import annotations

import numpy as np
import pytest

from _own_images import save
from spadecam._progress import SpadecamWarning
from spadecam.data.folders import (
    DatasetError,
    collect_inputs,
    folder_layout,
    list_images,
    mvtec_layout,
)

PIX = np.zeros((4, 4), np.uint8)


def touch(folder, *names):
    for n in names:
        save(folder / n, PIX)
    return folder


def test_list_images_sorts_and_skips_other_files(tmp_path):
    d = touch(tmp_path / "d", "b.png", "a.PNG", "c.tiff", "d.jpeg")
    (d / "notes.txt").write_text("x")
    (d / ".hidden.png").write_bytes(b"")
    (d / "sub").mkdir()
    touch(d / "sub", "deeper.png")  # not recursive
    with pytest.warns(SpadecamWarning) as record:
        assert [p.name for p in list_images(d)] == ["a.PNG", "b.png", "c.tiff", "d.jpeg"]
    said = " | ".join(str(w.message) for w in record)
    assert "skipped 1 file(s) that are not images" in said and "notes.txt" in said
    assert "sub-folders are not read" in said and "sub" in said


def test_empty_and_missing_folders_are_named_with_their_option(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"--normal .*empty.*holds no images"):
        folder_layout(tmp_path / "empty", [])
    with pytest.raises(DatasetError, match=r"--anomaly .*nope: no such folder"):
        folder_layout(touch(tmp_path / "n", "a.png"), [tmp_path / "nope"])
    with pytest.raises(DatasetError, match="not a folder"):
        list_images(tmp_path / "n" / "a.png", "--normal")


def test_folder_layout_labels_and_masks_by_stem(tmp_path):
    n = touch(tmp_path / "normal", "x.png", "y.png")
    a1 = touch(tmp_path / "scratch", "s1.png", "s2.png")
    a2 = touch(tmp_path / "dent", "d1.png")
    m = touch(tmp_path / "masks", "s1_mask.png", "d1.png")  # both naming styles
    data = folder_layout(n, [a1, a2], m)
    assert [p.name for p in data.paths] == ["x.png", "y.png", "s1.png", "s2.png", "d1.png"]
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1, 1])
    assert [q.name if q else None for q in data.masks] == [
        None, None, "s1_mask.png", None, "d1.png"
    ]
    assert len(data) == 5


def test_mask_with_no_image_is_an_error_naming_it(tmp_path):
    n = touch(tmp_path / "normal", "x.png")
    a = touch(tmp_path / "bad", "b1.png")
    m = touch(tmp_path / "masks", "b1_mask.png", "ghost_mask.png")
    with pytest.raises(DatasetError, match=r"--masks: mask .*ghost_mask.png has no image"):
        folder_layout(n, a, m)
    m2 = touch(tmp_path / "masks2", "x.png")  # a normal image's stem: still no anomaly
    with pytest.raises(DatasetError, match=r"x.png has no image"):
        folder_layout(n, a, m2)


def test_repeated_stems_need_one_mask_folder_per_anomaly_folder(tmp_path):
    n = touch(tmp_path / "normal", "x.png")
    a1 = touch(tmp_path / "crack", "000.png")
    a2 = touch(tmp_path / "hole", "000.png")
    m1 = touch(tmp_path / "gt_crack", "000_mask.png")
    m2 = touch(tmp_path / "gt_hole", "000_mask.png")
    with pytest.raises(DatasetError, match="share the stem '000'"):
        folder_layout(n, [a1, a2], m1)
    data = folder_layout(n, [a1, a2], [m1, m2])
    assert data.masks[1].parent.name == "gt_crack" and data.masks[2].parent.name == "gt_hole"
    with pytest.raises(DatasetError, match="given 3 times for 2"):
        folder_layout(n, [a1, a2], [m1, m2, m1])
    with pytest.raises(DatasetError, match="needs anomalous images"):
        folder_layout(n, [], m1)


def test_same_images_given_twice_are_refused(tmp_path):
    n = touch(tmp_path / "normal", "x.png")
    with pytest.raises(DatasetError, match="listed twice"):
        folder_layout(n, [n])


def test_collect_inputs_mixes_files_and_folders(tmp_path):
    d = touch(tmp_path / "d", "b.png", "a.png")
    f = touch(tmp_path / "e", "z.png") / "z.png"
    got = collect_inputs([f, d, d / "a.png"])
    assert [p.name for p in got] == ["z.png", "a.png", "b.png"]
    with pytest.raises(DatasetError, match="INPUT: no such file or folder: .*missing.png"):
        collect_inputs([tmp_path / "missing.png"])
    with pytest.raises(DatasetError, match="at least one"):
        collect_inputs([])


def test_mvtec_layout(tmp_path):
    root = tmp_path / "bottle"
    touch(root / "train" / "good", "000.png", "001.png")
    touch(root / "test" / "good", "000.png")
    touch(root / "test" / "crack", "000.png", "001.png")
    touch(root / "test" / "hole", "000.png")
    touch(root / "ground_truth" / "crack", "000_mask.png", "001_mask.png")
    touch(root / "ground_truth" / "hole", "000_mask.png")
    train, test = mvtec_layout(root)
    assert len(train) == 2 and (train.labels == 0).all() and train.masks == [None, None]
    assert [f"{p.parent.name}/{p.name}" for p in test.paths] == [
        "good/000.png", "crack/000.png", "crack/001.png", "hole/000.png"
    ]
    np.testing.assert_array_equal(test.labels, [0, 1, 1, 1])
    assert test.masks[0] is None
    assert [m.parent.name for m in test.masks[1:]] == ["crack", "crack", "hole"]
    _, only = mvtec_layout(root, kinds=["hole"])
    assert len(only) == 2
    with pytest.raises(DatasetError, match="unknown defect kinds"):
        mvtec_layout(root, kinds=["scratch"])
    touch(root / "ground_truth" / "hole", "007_mask.png")
    with pytest.raises(DatasetError, match="007_mask.png has no image"):
        mvtec_layout(root)


# --------------------------------------------------------------------------- nothing dropped


def test_a_dangling_symlink_in_a_folder_is_listed_for_the_reader_to_name(tmp_path):
    d = touch(tmp_path / "n", "a.png")
    (d / "dangling.png").symlink_to(tmp_path / "missing.png")  # used to be skipped unseen
    assert [p.name for p in list_images(d)] == ["a.png", "dangling.png"]
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(DatasetError, match=r"gone.png \(broken symbolic link to .*nowhere.png\)"):
        collect_inputs([tmp_path / "gone.png", d])


def test_all_missing_inputs_are_named_in_one_error(tmp_path):
    with pytest.raises(DatasetError) as exc:
        collect_inputs([tmp_path / "x.png", touch(tmp_path / "d", "a.png"), tmp_path / "y"])
    assert "x.png" in str(exc.value) and str(tmp_path / "y") in str(exc.value)


def test_score_inputs_are_read_recursively_and_link_cycles_cannot_loop(tmp_path):
    test = tmp_path / "test"
    touch(test / "good", "g1.png", "g0.png")
    touch(test / "bad" / "scratch", "s0.png")
    (test / "bad" / "loop").symlink_to(test, target_is_directory=True)  # a cycle
    (test / "again").symlink_to(test / "good", target_is_directory=True)  # read twice
    (tmp_path / "outside").mkdir()
    touch(tmp_path / "outside", "o.png")
    (test / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.warns(SpadecamWarning, match="not entered twice") as record:
        got = collect_inputs([test])
    assert [p.relative_to(test).as_posix() for p in got] == [
        "bad/scratch/s0.png", "good/g0.png", "good/g1.png", "linked/o.png"
    ]
    said = str(record[0].message)
    assert "loop" in said and "again" in said


def test_a_labelled_folder_of_sub_folders_names_them(tmp_path):
    touch(tmp_path / "test" / "good", "a.png")
    touch(tmp_path / "test" / "bad", "b.png")
    with pytest.raises(DatasetError, match=r"holds no images .*; it has sub-folders .*bad.*good"):
        folder_layout(tmp_path / "test")


def test_mvtec_hidden_folders_are_no_kind_and_missing_masks_are_said(tmp_path):
    root = tmp_path / "bottle"
    touch(root / "train" / "good", "000.png")
    touch(root / "test" / "good", "000.png")
    touch(root / "test" / "crack", "000.png")
    (root / "test" / ".ipynb_checkpoints").mkdir()  # was taken for a defect kind
    with pytest.warns(SpadecamWarning, match=r"no folder .*ground_truth.*crack.*no masks"):
        _, test = mvtec_layout(root)
    assert [p.parent.name for p in test.paths] == ["good", "crack"] and test.masks == [None] * 2
