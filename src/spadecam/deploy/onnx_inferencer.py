"""An exported detector run with onnxruntime, without torch (``spadecam score --onnx``).

:class:`OnnxSPADE` reads the ONNX file that :func:`spadecam.deploy.export_onnx` (``spadecam
export``) wrote and scores images as the torch detector does: the same letterbox / resize
in numpy and Pillow (:mod:`spadecam.preprocess`), the graph for the networks and the score,
the maps brought back to each image's size, and the one decision rule (anomalous when score
> threshold, :mod:`spadecam.decision`). :func:`score_onnx` is ``spadecam score --onnx``: the
same CSV and overlay PNGs as the torch path (:mod:`spadecam.deploy.outputs`).

Nothing here imports torch (a test checks ``sys.modules``); it needs ``onnxruntime``
(``pip install 'spadecam[onnx]'``), numpy and Pillow.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spadecam._fs import outputs
from spadecam._json import json_float
from spadecam._progress import warn
from spadecam.data.folders import collect_inputs
from spadecam.data.images import read_images
from spadecam.decision import flag_anomalous, format_threshold
from spadecam.deploy import outputs as _outputs
from spadecam.exceptions import ModelFormatError, NonFiniteScoreError, _check_finite
from spadecam.preprocess import RESIZE_POLICIES, check_images, maps_to_sizes, stack_maps, to_model_input

__all__ = ["CHECKSUM_KEY", "OnnxSPADE", "checksum_entry", "score_onnx", "split_checksum"]

#: Metadata every exported graph must carry (:data:`spadecam.deploy.onnx_export.METADATA_KEYS`).
_REQUIRED = ("detector", "threshold", "image_size", "channels", "resize", "outputs")
#: Bytes of the feature bank's (N, M, K) distance tensor one batch may hold.
_BANK_BYTES = 256 << 20


#: Metadata key of the sha256 an exported file carries of everything before it.
CHECKSUM_KEY = "spadecam_sha256"


def checksum_entry(hexdigest: str) -> bytes:
    """The bytes that end an exported file: one more ``metadata_props`` entry of the ONNX
    ModelProto (field 14) holding :data:`CHECKSUM_KEY` = the sha256 (64 hex digits, as a JSON
    string like every metadata value) of every byte before it. A protobuf parser merges a
    message's concatenated parts, so onnx and onnxruntime read it as one more metadata entry,
    and the file can be checked without parsing it (:func:`split_checksum`) or importing onnx.
    """
    key, value = CHECKSUM_KEY.encode(), f'"{hexdigest}"'.encode("ascii")
    if len(value) != 66:
        raise ValueError(f"a sha256 has 64 hex digits, got {hexdigest!r}")
    entry = bytes([0x0A, len(key)]) + key + bytes([0x12, len(value)]) + value
    return bytes([0x72, len(entry)]) + entry


_CHECKSUM_BYTES = len(checksum_entry("0" * 64))
_CHECKSUM_HEAD = checksum_entry("0" * 64)[:-66]


def split_checksum(data: bytes) -> tuple[memoryview, str | None]:
    """(the graph's bytes, a view without a copy, and the sha256 its last
    :func:`checksum_entry` records, or None when the file does not end with one)."""
    tail = data[-_CHECKSUM_BYTES:]
    if len(data) > _CHECKSUM_BYTES and tail.startswith(_CHECKSUM_HEAD):
        value = tail[len(_CHECKSUM_HEAD):]
        digest = value[1:-1].decode("ascii", errors="replace")
        if value[:1] == value[-1:] == b'"' and all(c in "0123456789abcdef" for c in digest):
            return memoryview(data)[:-_CHECKSUM_BYTES], digest
    return memoryview(data), None


def _checked_bytes(path: Path) -> bytes:
    """The file's bytes, checked against the sha256 it carries (ModelFormatError otherwise);
    a file without one (exported before spadecam 0.2.0) is read with a warning."""
    data = path.read_bytes()
    body, digest = split_checksum(data)
    if digest is None:
        if CHECKSUM_KEY.encode() in data[-4 * _CHECKSUM_BYTES:]:
            raise ModelFormatError(f"{path}: its sha256 entry is damaged or no longer at the "
                                   "file's end (the file was edited or re-saved after `spadecam "
                                   "export`); re-export the model")
        warn(f"{path} carries no sha256 (exported before spadecam 0.2.0, or re-saved by "
             "another tool), so damage to it cannot be detected; re-export it with spadecam "
             "export")
    elif hashlib.sha256(body).hexdigest() != digest:
        raise ModelFormatError(f"{path} does not match the sha256 it carries: the file is "
                               "damaged or was edited; re-export the model (spadecam export)")
    return data


def _session(path: Path, threads: int | None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("scoring an ONNX file needs onnxruntime: pip install "
                          "'spadecam[onnx]' (or onnxruntime)") from None
    data = _checked_bytes(path)
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelFormatError(f"{path}: not an ONNX model onnxruntime can load ({exc})") from None


def _check_graph(path: Path, session: Any, meta: dict[str, Any]) -> None:
    """The graph's inputs and outputs against its metadata: ``images`` (N, C, S, S) and
    ``valid`` (N, 1, S, S) with the metadata's C and S, the outputs it names. ModelFormatError
    naming the file and the mismatch (a graph of another tool, or edited metadata)."""
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    if "images" not in inputs or set(inputs) - {"images", "valid"}:
        raise ModelFormatError(
            f"{path}: the graph's inputs are {sorted(inputs)}, not those of `spadecam export` "
            "(images, valid); it carries spadecam's metadata but is another model")
    if outputs != meta["outputs"]:
        raise ModelFormatError(
            f"{path}: the graph's outputs are {outputs} but its metadata names "
            f"{meta['outputs']}; not a graph `spadecam export` wrote")
    c, size = meta["channels"], meta["image_size"]
    for name, want in (("images", [c, size, size]), ("valid", [1, size, size])):
        got = inputs.get(name)
        if got is None:
            continue
        fixed = [d for d in got[1:]]
        if len(got) != 4 or any(isinstance(d, int) and d != w for d, w in zip(fixed, want)):
            raise ModelFormatError(
                f"{path}: the graph's input {name!r} has shape {got} but the metadata says "
                f"channels {c} and image_size {size} (expected [N, {', '.join(map(str, want))}]"
                "); the metadata was edited or belongs to another graph")


def _parse_metadata(path: Path, raw: dict[str, str]) -> dict[str, Any]:
    """The graph's metadata, each value JSON text, checked; ModelFormatError naming the file
    and the key otherwise."""
    meta: dict[str, Any] = {}
    for key, text in raw.items():
        try:
            meta[key] = json.loads(text)
        except ValueError:
            raise ModelFormatError(f"{path}: metadata {key!r} is not JSON: {text[:40]!r}") from None
    rules = {
        "detector": (lambda v: isinstance(v, str), "a detector class name"),
        "threshold": (lambda v: not math.isnan(_as_float(v, math.nan)),
                      "a number, 'Infinity' or '-Infinity'"),
        "image_size": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        "channels": (lambda v: v in (1, 3, 4), "1, 3 or 4"),
        "resize": (lambda v: v in RESIZE_POLICIES, f"one of {RESIZE_POLICIES}"),
        "outputs": (lambda v: isinstance(v, list) and "score" in v, "a list naming score"),
        "overlay_scale": (lambda v: v is None or _as_float(v, -1.0) >= 0,
                          "null or a number >= 0"),
        "min_input_size": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        "knn_bank_shape": (lambda v: v is None or (isinstance(v, list) and len(v) == 2 and all(
            isinstance(n, int) and n >= 1 for n in v)), "null or [rows, features]"),
        "patch_bank_shape": (lambda v: v is None or (isinstance(v, list) and len(v) == 2 and all(
            isinstance(n, int) and n >= 1 for n in v)), "null or [rows, features]"),
    }
    for key, (ok, expected) in rules.items():
        if key in meta and not ok(meta[key]):
            raise ModelFormatError(f"{path}: metadata {key!r} must be {expected}, got "
                                   f"{meta[key]!r}")
    # strict JSON writes an infinite float as a string (spadecam._json.json_text)
    for key in ("threshold", "overlay_scale"):
        meta[key] = json_float(meta.get(key), key)
    return meta


def _as_float(v: Any, otherwise: float) -> float:
    """A number, or the string json_text writes an infinite float as, as a float; else
    ``otherwise``."""
    try:
        x = json_float(v)
    except ValueError:
        return otherwise
    return otherwise if x is None else x


class OnnxSPADE:
    """A detector exported by ``spadecam export``, scored with onnxruntime (no torch).

    The API of the torch detectors for scoring: :meth:`decision_function`,
    :meth:`anomaly_map`, :meth:`decision_function_and_map`, :meth:`predict`,
    ``threshold_``. It runs any of the four exported detectors (SPADE, NaiveSPADE,
    VAEDetector, CNNDetector; ``detector`` names which).

    Parameters
    ----------
    path : str or PathLike, the .onnx file
    batch_size : int, optional
        Images per graph run; default 64, fewer when the feature bank's (N, M, K) distance
        tensor would pass 256 MiB.
    threads : int, optional
        onnxruntime's intra-op threads (default: its own choice).

    Attributes
    ----------
    threshold_ : float, anomalous when score > threshold_
    image_size, channels, resize : the model's input (S, C, "letterbox" / "resize")
    detector : str, the exported detector's class name
    overlay_scale : float or None, map value shown at full colour in overlays
    has_anomaly_map : bool, False for the CNN-based baseline
    metadata : dict, the graph's metadata as parsed

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ModelFormatError
        Not an ONNX file onnxruntime loads; one without spadecam's metadata (naming the
        missing keys); a file that does not match the sha256 it carries (damaged or edited);
        metadata that contradicts the graph (channels or image_size other than the input's,
        other inputs or outputs than ``spadecam export`` writes). Each names the file.
    ImportError
        onnxruntime is not installed.
    """

    def __init__(self, path: str | os.PathLike, batch_size: int | None = None,
                 threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"--onnx {self.path}: no such file")
        self.session = _session(self.path, threads)
        raw = self.session.get_modelmeta().custom_metadata_map
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise ModelFormatError(f"{self.path}: not exported by `spadecam export` (its "
                                   f"metadata lacks {', '.join(missing)})")
        self.metadata = meta = _parse_metadata(self.path, raw)
        _check_graph(self.path, self.session, meta)
        self.detector = meta["detector"]
        self.threshold_ = meta["threshold"]
        self.image_size, self.channels = meta["image_size"], meta["channels"]
        self.resize = meta["resize"]
        self.overlay_scale = meta.get("overlay_scale")
        self.has_anomaly_map = "anomaly_map" in meta["outputs"]
        self.min_input_size = int(meta.get("min_input_size") or 1)
        self._inputs = {i.name for i in self.session.get_inputs()}
        bank = meta.get("knn_bank_shape")
        per_image = 4 * int(np.prod(bank)) if bank else 0
        patch = meta.get("patch_bank_shape")
        if patch:  # the graph's product and its difference: 2 x (queries x bank rows) floats,
            # queries at stride 8
            per_image += 2 * 4 * (-(-int(self.image_size) // 8)) ** 2 * int(patch[0])
        self.batch_size = int(batch_size or max(1, min(64, _BANK_BYTES // max(per_image, 1))))

    def __repr__(self) -> str:
        return (f"OnnxSPADE({str(self.path)!r}: {self.detector}, {self.channels}x"
                f"{self.image_size}x{self.image_size} {self.resize}, threshold "
                f"{format_threshold(self.threshold_)})")

    # ------------------------------------------------------------------ scoring

    def _batches(self, X: Any) -> Any:
        images = check_images(X)
        if images[0].shape[0] != self.channels:
            raise ValueError(f"X has {images[0].shape[0]} channel(s) but the model was fitted "
                             f"on {self.channels}; convert the images to {self.channels} "
                             "channel(s)")
        for i in range(0, len(images), self.batch_size):
            mi = to_model_input(images[i : i + self.batch_size], self.image_size, self.resize)
            valid = mi.valid if mi.valid is not None else np.ones(
                (len(mi.u), 1, self.image_size, self.image_size), np.float32)
            feed = {"images": np.ascontiguousarray(mi.u, dtype=np.float32), "valid": valid}
            out = self.session.run(None, {k: v for k, v in feed.items() if k in self._inputs})
            yield mi, out

    def decision_function_and_map(self, X: Any) -> tuple[np.ndarray, Any]:
        """Scores (N,) float64 and maps at each image's size from one pass.

        X: an array (N, H, W) / (N, C, H, W) / (N, H, W, C), one image (H, W, C) / (H, W),
        or a list of images (H, W) / (C, H, W) / (H, W, C) of any sizes; uint8 [0, 255] or
        float [0, 1] (:func:`spadecam.preprocess.check_images`, the layouts of
        :func:`spadecam.preprocess.batch_layout`). Maps: (N, H, W) float32 >= 0 when all
        images share a size, else a list; None for a detector without maps.

        Raises
        ------
        ValueError
            Bad images or a channel count the model does not take; NonFiniteScoreError for
            non-finite scores (naming the images' indices).
        """
        scores: list[np.ndarray] = []
        maps: list[np.ndarray] = []
        for mi, out in self._batches(X):
            scores.append(np.asarray(out[0], dtype=np.float64))
            if self.has_anomaly_map:
                maps += maps_to_sizes(out[1], mi.sizes, mi.boxes)
        s = np.concatenate(scores)
        _check_finite(self, s)
        return s, (stack_maps(maps) if self.has_anomaly_map else None)

    def decision_function(self, X: Any) -> np.ndarray:
        """Anomaly score per image, (N,) float64, higher = more anomalous (see
        :meth:`decision_function_and_map`)."""
        return self.decision_function_and_map(X)[0]

    def anomaly_map(self, X: Any) -> Any:
        """Per-pixel maps at each image's size (see :meth:`decision_function_and_map`).

        Raises ValueError for the CNN-based baseline, which has none."""
        if not self.has_anomaly_map:
            raise ValueError(f"{self.detector} gives no per-pixel map")
        return self.decision_function_and_map(X)[1]

    def predict(self, X: Any) -> np.ndarray:
        """0 = normal, 1 = anomalous (score > ``threshold_``), (N,) int64."""
        return flag_anomalous(self.decision_function(X), self.threshold_)

    # ------------------------------------------------------------------ files

    def read(self, paths: Sequence[Path]) -> list[np.ndarray]:
        """Each file at its own size in the model's channels, (C, H_i, W_i) float32 [0, 1];
        one ImageError names every unusable file (as ``spadecam score`` with torch)."""
        return read_images(paths, self.channels, min_size=self._min_side())

    def _min_side(self) -> int:
        """The smallest side a file may have: any when the graph resizes every image to its
        input side (as ``fit`` takes any size), else the networks' minimum."""
        return 1 if self.image_size else self.min_input_size


def score_onnx(
    onnx: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    maps: str | os.PathLike | None = None,
    log: Callable[[str], Any] | None = None,
) -> list[dict[str, Any]]:
    """``spadecam score --onnx``: score image files with an exported graph, no torch.

    Parameters, outputs and errors as :func:`spadecam.workflow.score` (one process): a CSV of
    path,score,label,map (``out``) and overlay PNGs (``maps``), both written after every image
    was read and scored (in chunks of :data:`spadecam.deploy.outputs.SCORE_CHUNK`, memory
    flat in the number of images); returns the rows.
    """
    det = OnnxSPADE(onnx)
    if log is not None:
        log(f"scoring with {det!r} (onnxruntime, fp32)")
    _outputs.check_outputs(out, maps, det.has_anomaly_map)
    # the CSV and the overlays together or not at all (an interruption, a full disk)
    with outputs(("--out", out), ("--maps", maps)):
        paths = collect_inputs(inputs)
        names = _outputs.map_names(paths) if maps is not None else []
        # every file, before anything is written
        read_images(paths, det.channels, min_size=det._min_side(), keep=False)

        def score(x: list[np.ndarray], chunk: Sequence[Path]) -> tuple[np.ndarray, Any]:
            try:
                # batches of one (1, C, H, W): no layout to guess, whatever the size
                return det.decision_function_and_map([a[None] for a in x])
            except NonFiniteScoreError as exc:  # as spadecam score with torch (names the files)
                raise _outputs.non_finite_error(exc, chunk) from None

        # in chunks with flat memory; overlays staged, moved into place once all is scored
        scores = _outputs.score_with_overlays(det.read, score, paths, names, maps,
                                              det.overlay_scale)
        rows = _outputs.score_rows(paths, scores, det.threshold_, maps,
                                   names if maps is not None else None)
        if out is not None:
            _outputs.write_csv(out, rows)
        return rows
