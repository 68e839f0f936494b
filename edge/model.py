"""ONNX Runtime inference driven entirely by the model's own metadata, plus an atomic hot-swap slot.

``EdgeModel.load(path)`` opens an InferenceSession (``threads`` intra-op threads, one inter-op thread,
sequential execution, all graph optimisations), reads ``protocol.model_meta.ModelMeta`` from the ONNX
``metadata_props`` and checks that the graph agrees with it (input C/H/W and float dtype, output width ==
number of labels). Every failure - missing file, corrupt bytes, bad metadata, shape disagreement - is a
``ModelError`` whose message says what is wrong, never a raw ORT traceback: the updater reports the message
in ``model/status`` and keeps the old model.

Preprocessing uses the metadata alone (so a new model with another input size, colour order or class list
needs no edge code change) and touches the full-size crop exactly once: crop the ROI (a view, no copy),
area-average it down to the model size (the first 2x halving is the one pass over the full crop), convert
colour on a *smaller* image, then one fused normalise ``x * (scale/std) + (-mean/std)`` into a preallocated float32
NCHW buffer, with the per-channel factors precomputed at load time.

Whether the graph outputs logits or probabilities: the trainer exports raw logits (``output_name``
"logits"); an output named like ``prob*``/``softmax*`` is taken as probabilities already. ``predict``
always returns probabilities.

Test-time input calibration (:class:`InputCalibration`, off unless configured): a camera whose light changes
(a lamp fails, exposure drifts) sees every pixel scaled per channel long before a model trained on the new
light can arrive. From unlabelled frames the calibration keeps per-channel mean and spread of the model-sized
crop -- a *reference* (the camera's first frames) and a recent window -- and, when engaged, maps the current
statistics back onto the reference with a per-channel gain and offset. That affine map folds into the fused
normalise (``scale/std`` and ``-mean/std`` per channel), so inference costs exactly what it did; observing
costs one ``cv2.meanStdDev`` on the small crop per frame. Uploads are mapped the same way
(:meth:`EdgeModel.calibrate_image`), so the trainer learns in the space the edge infers in. Torch-free,
reversible (:meth:`InputCalibration.release`, and an identity map disengages by itself), and reported in the
edge's stats.

``ModelSlot`` holds the active and previous model. The frame loop reads ``slot.active`` once per frame
(or micro-batch) - a plain attribute read, atomic under the GIL - so a swap lands *between* frames without
stopping the loop. ``swap`` loads, validates and smoke-tests the new model (finite, well-formed outputs
on a few recent frames plus blank ones) before switching; ``rollback`` switches back.
"""
from __future__ import annotations

import hashlib
import math
import operator
import os
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import onnxruntime as ort

from protocol.errors import ProtocolError
from edge.uncertainty import entropy
from protocol.model_meta import ModelMeta


class ModelError(RuntimeError):
    """A model cannot be used; ``reason`` is a short code, the message says what mismatches."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Prediction:
    """One frame's result: full probability vector, the top class, the normalised entropy (computed with
    the softmax, where it is almost free; see ``edge.uncertainty``) and the top-k (label, prob) pairs.

    Read-only by convention. ``topk`` is computed on first use: the frame loop needs it only for the few
    frames it uploads (and for the margin score), and sorting every frame's probabilities cost ~0.8 us.
    """

    __slots__ = ("probs", "index", "label", "confidence", "entropy", "_labels", "_k", "_topk")

    def __init__(self, probs: np.ndarray, index: int, label: str, confidence: float, entropy: float,
                 labels: Sequence[str], k: int, topk: list[tuple[str, float]] | None = None) -> None:
        self.probs = probs
        self.index = index
        self.label = label
        self.confidence = confidence
        self.entropy = entropy
        self._labels = labels
        self._k = k
        self._topk = topk

    @property
    def topk(self) -> list[tuple[str, float]]:
        """The ``k`` most probable (label, probability) pairs, most probable first."""
        if self._topk is None:
            p = self.probs
            if len(p) <= 64:
                row = p.tolist()
                idx = sorted(range(len(row)), key=row.__getitem__, reverse=True)[: self._k]
            else:
                part = np.argpartition(p, -self._k)[-self._k:]
                idx = part[np.argsort(p[part])[::-1]].tolist()
                row = p
            self._topk = [(self._labels[i], float(row[i])) for i in idx]
        return self._topk

    def __repr__(self) -> str:
        return f"Prediction(label={self.label!r}, confidence={self.confidence:.4f}, entropy={self.entropy:.4f})"


_PROB_OUTPUT_HINTS = ("prob", "softmax")
_ORT_FLOAT = "tensor(float)"


def _outputs_probabilities(name: str) -> bool:
    n = name.lower()
    return any(h in n for h in _PROB_OUTPUT_HINTS)


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise numerically stable softmax (in place on a float32 copy)."""
    z = np.array(x, dtype=np.float32, copy=True)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _blob_params(meta: ModelMeta, mul: np.ndarray | None = None, add: np.ndarray | None = None) -> object | None:
    """``cv2.dnn.Image2BlobParams`` equivalent to the metadata's normalisation, or None (old cv2 / no dnn).

    blob = (x - mean') * scalefactor with mean' = mean/scale and scalefactor = scale/std per channel, both
    in the *output* channel order (after ``swapRB``), which is what OpenCV expects. With ``mul``/``add`` (the
    fused ``x * mul + add`` factors, output channel order) the same map is expressed as
    scalefactor = mul, mean' = -add/mul.
    """
    dnn = getattr(cv2, "dnn", None)
    if dnn is None or not hasattr(dnn, "Image2BlobParams") or not hasattr(dnn, "blobFromImageWithParams"):
        return None
    try:
        p = dnn.Image2BlobParams()
        c = meta.channels
        if mul is not None and add is not None:
            m_, a_ = mul.reshape(-1).astype(np.float64), add.reshape(-1).astype(np.float64)
            sf = [float(v) for v in m_] + [0.0] * (4 - c)
            mean = [float(-a / m) for a, m in zip(a_, m_)] + [0.0] * (4 - c)
        else:
            sf = [meta.scale / s for s in meta.std] + [0.0] * (4 - c)
            mean = [m / meta.scale for m in meta.mean] + [0.0] * (4 - c)
        p.scalefactor = tuple(sf)
        p.mean = tuple(mean)
        p.size = (int(meta.width), int(meta.height))
        p.swapRB = meta.color_order == "RGB"
        p.ddepth = cv2.CV_32F
        return p
    except Exception:  # an OpenCV build whose binding differs: fall back to numpy
        return None


def _dim(d: object) -> int | None:
    """An ONNX dim as an int, or None when symbolic/unknown."""
    return d if isinstance(d, int) and d > 0 else None


class EdgeModel:
    """An ORT session plus everything needed to feed it from BGR frames. Build with ``EdgeModel.load``."""

    def __init__(
        self,
        session: ort.InferenceSession,
        meta: ModelMeta,
        *,
        path: str = "",
        sha256: str = "",
        roi: Sequence[int] | None = None,
        topk: int = 3,
    ) -> None:
        self.session = session
        self.meta = meta
        self.path = path
        self.sha256 = sha256
        self.labels: list[str] = list(meta.labels)
        self.num_classes = len(self.labels)
        self._log_k = math.log(self.num_classes) if self.num_classes > 1 else 1.0
        self.topk = max(1, min(int(topk), self.num_classes))
        self.roi: tuple[int, int, int, int] | None = tuple(int(v) for v in roi) if roi is not None else (
            tuple(meta.roi) if meta.roi is not None else None
        )  # type: ignore[assignment]
        if self.roi is not None and (len(self.roi) != 4 or self.roi[2] < 1 or self.roi[3] < 1):
            raise ModelError("bad_roi", f"roi must be [x, y, w, h] with w, h >= 1, got {list(self.roi)}")
        self.size = (int(meta.width), int(meta.height))
        self._crop_shape: tuple[int, ...] | None = None
        self._crop_slices: tuple[slice, slice] = (slice(None), slice(None))
        self.channels = int(meta.channels)
        self.color_order = meta.color_order
        # Fold scale, mean and std into one multiply-add: (x*scale - mean)/std == x*(scale/std) + (-mean/std).
        std = np.asarray(meta.std, dtype=np.float64)
        mean = np.asarray(meta.mean, dtype=np.float64)
        self._mul = (meta.scale / std).astype(np.float32).reshape(-1, 1, 1)
        self._add = (-mean / std).astype(np.float32).reshape(-1, 1, 1)
        self._blob = _blob_params(meta)  # OpenCV's fused HWC->NCHW normalise, when this cv2 build has it
        self._base = (self._mul.copy(), self._add.copy(), self._blob)
        self.correction: tuple[np.ndarray, np.ndarray] | None = None  # (gain, offset) in crop channel order
        self._input_name = meta.input_name
        self._output_names = [meta.output_name]
        self.outputs_logits = not _outputs_probabilities(meta.output_name)
        self.max_batch: int | None = None  # None = any batch size; set by _validate from the graph
        self._validate()

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        threads: int = 1,
        *,
        roi: Sequence[int] | None = None,
        topk: int = 3,
        providers: Sequence[str] | None = None,
    ) -> "EdgeModel":
        """Open, read metadata and validate; any problem is a ``ModelError`` naming it.

        ``roi`` ([x, y, w, h] in frame pixels) overrides the metadata ROI (a per-camera config setting).
        """
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ModelError("not_found", f"cannot read model file {p}: {exc.strerror or exc}") from None
        if not data:
            raise ModelError("corrupt", f"model file {p} is empty")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # ORT warnings would otherwise spam the device log on every load
        try:
            session = ort.InferenceSession(data, sess_options=opts, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:  # ORT raises several pybind types (InvalidProtobuf, Fail, InvalidGraph, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError("corrupt", f"{p} is not a loadable ONNX model ({type(exc).__name__}: {first[:300]})") from None
        props = dict(session.get_modelmeta().custom_metadata_map)
        try:
            meta = ModelMeta.from_props(props)
        except ProtocolError as exc:
            raise ModelError("bad_metadata", f"{p}: {exc.detail or exc.reason}") from None
        model = cls(session, meta, path=str(p), sha256=hashlib.sha256(data).hexdigest(), roi=roi, topk=topk)
        return model

    def _validate(self) -> None:
        """Graph versus metadata: names, rank, C/H/W, dtype, output width == len(labels)."""
        m = self.meta
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if m.input_name not in inputs:
            raise ModelError("input_mismatch", f"metadata input_name {m.input_name!r} not in graph inputs {sorted(inputs)}")
        if len(inputs) != 1:
            raise ModelError("input_mismatch", f"graph has {len(inputs)} inputs {sorted(inputs)}; the edge feeds exactly one")
        if m.output_name not in outputs:
            raise ModelError("output_mismatch", f"metadata output_name {m.output_name!r} not in graph outputs {sorted(outputs)}")
        inp, out = inputs[m.input_name], outputs[m.output_name]
        if inp.type != _ORT_FLOAT:
            raise ModelError("input_mismatch", f"input {inp.name!r} has dtype {inp.type}, the edge feeds {_ORT_FLOAT}")
        if out.type != _ORT_FLOAT:
            raise ModelError("output_mismatch", f"output {out.name!r} has dtype {out.type}, expected {_ORT_FLOAT}")
        shape = list(inp.shape)
        if len(shape) != 4:
            raise ModelError("input_mismatch", f"input {inp.name!r} has rank {len(shape)} {shape}, expected 4 (NCHW)")
        want = {"C": m.channels, "H": m.height, "W": m.width}
        for axis, (key, expected) in zip((1, 2, 3), want.items()):
            got = _dim(shape[axis])
            if got is not None and got != expected:
                raise ModelError(
                    "input_mismatch",
                    f"input {inp.name!r} shape {shape}: {key}={got} but metadata says {key}={expected} "
                    f"(channels={m.channels}, height={m.height}, width={m.width})",
                )
        self.max_batch = _dim(shape[0])
        oshape = list(out.shape)
        if len(oshape) != 2:
            raise ModelError("output_mismatch", f"output {out.name!r} has rank {len(oshape)} {oshape}, expected 2 (N, classes)")
        width = _dim(oshape[1])
        if width is not None and width != self.num_classes:
            raise ModelError(
                "output_mismatch",
                f"output {out.name!r} width {width} != {self.num_classes} labels in metadata {self.labels}",
            )

    @property
    def version(self) -> str:
        return self.meta.version

    # -- preprocessing -------------------------------------------------------------------------------------
    def crop(self, frame_bgr: np.ndarray) -> np.ndarray:
        """The ROI of a frame (a view; clamped to the frame). The whole frame when there is no ROI."""
        if self.roi is None:
            return frame_bgr
        shape = frame_bgr.shape[:2]
        if shape != self._crop_shape:  # clamp once per frame size, not per frame
            x, y, w, h = self.roi
            H, W = shape
            x0, y0 = min(max(x, 0), W), min(max(y, 0), H)
            x1, y1 = min(x + w, W), min(y + h, H)
            if x1 <= x0 or y1 <= y0:
                raise ValueError(f"roi {list(self.roi)} lies outside the {W}x{H} frame")
            self._crop_slices = (slice(y0, y1), slice(x0, x1))
            self._crop_shape = shape
        return frame_bgr[self._crop_slices]

    def resize(self, frame_bgr: np.ndarray) -> np.ndarray:
        """Crop + area-averaging resize to the model size. Returns uint8 BGR, or grey for GRAY models.

        A small mip chain, cheapest first-pass first: halve with INTER_AREA (exact 2x2 box averages,
        OpenCV's fast path) while the image stays at least twice the target; convert to grey on that
        smaller image (grey conversion and box averaging are both linear: the order only changes
        rounding); then, for a ratio >= 2 that is not an integer, a bilinear step to the nearest integer
        multiple of the target followed by an integer-ratio INTER_AREA; else one INTER_AREA. A single
        INTER_AREA at a non-integer ratio takes OpenCV's slow general path. For the simulator's 128x128
        colour ROI -> 28x28 grey: 11 us, against 19 us for grey-then-(bilinear to 112, area to 28) and
        39 us for one direct INTER_AREA; it lands closer to the trainer's antialiased bilinear resize
        (``trainer/images.py``): 2.4 grey levels mean difference against 3.3 (measured on ``sim:digits``,
        see docs/NOTES.md).
        """
        img = self.crop(frame_bgr)
        tw, th = self.size
        h, w = img.shape[:2]
        while w >= 4 * tw and h >= 4 * th:
            w, h = w // 2, h // 2
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        if self.color_order == "GRAY" and img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        if w == tw and h == th:
            return img
        kx, ky = w // tw, h // th
        if kx >= 2 and ky >= 2 and (w % tw or h % th):
            img = cv2.resize(img, (tw * kx, th * ky), interpolation=cv2.INTER_LINEAR)
        return cv2.resize(img, self.size, interpolation=cv2.INTER_AREA)

    def set_input_correction(self, gain: np.ndarray | None, offset: np.ndarray | None = None) -> None:
        """Map every input pixel x (0-255, per channel of the resized crop: BGR, or grey for GRAY models) to
        ``gain * x + offset`` before the metadata's normalisation; ``None`` restores the plain model. Folded into
        the fused normalise, so it costs nothing per frame."""
        mul, add, blob = self._base
        if gain is None:
            self._mul, self._add, self._blob, self.correction = mul.copy(), add.copy(), blob, None
            return
        g = np.asarray(gain, np.float64).reshape(-1)
        b = np.zeros_like(g) if offset is None else np.asarray(offset, np.float64).reshape(-1)
        if len(g) == 1 and self.channels == 3:
            g, b = np.repeat(g, 3), np.repeat(b, 3)
        elif len(g) == 3 and self.channels == 1:  # a colour correction for a grey model: through BT.601 luma
            w = np.array([0.114, 0.587, 0.299])
            g, b = np.array([float(w @ g)]), np.array([float(w @ b)])
        if len(g) != self.channels:
            raise ValueError(f"correction has {len(g)} channels, the model takes {self.channels}")
        self.correction = (g.copy(), b.copy())
        if self.channels == 3 and self.color_order == "RGB":  # crop channels are BGR; the model's are RGB
            g, b = g[::-1], b[::-1]
        m0, a0 = mul.reshape(-1).astype(np.float64), add.reshape(-1).astype(np.float64)
        # (g x + b) * m0 + a0 = x * (g m0) + (b m0 + a0)
        self._mul = (g * m0).astype(np.float32).reshape(-1, 1, 1)
        self._add = (b * m0 + a0).astype(np.float32).reshape(-1, 1, 1)
        self._blob = _blob_params(self.meta, self._mul, self._add) if blob is not None else None

    def calibrate_image(self, image_bgr: np.ndarray) -> np.ndarray:
        """``image_bgr`` (uint8, any size) with the input correction applied, clipped to 0-255: what an upload
        carries so that the trainer sees what the model saw. The image itself when there is no correction."""
        if self.correction is None:
            return image_bgr
        g, b = self.correction
        if image_bgr.ndim == 3 and len(g) == 1:
            g, b = np.repeat(g, 3), np.repeat(b, 3)
        elif image_bgr.ndim == 2 and len(g) == 3:
            w = np.array([0.114, 0.587, 0.299])
            g, b = np.array([float(w @ g)]), np.array([float(w @ b)])
        out = image_bgr.astype(np.float32) * g.astype(np.float32) + b.astype(np.float32)
        return np.clip(out, 0, 255).astype(np.uint8)

    def _to_chw_into(self, small: np.ndarray, out: np.ndarray) -> None:
        """Colour order + fused normalise of the small image into ``out`` (C, H, W) float32."""
        if small.ndim == 2:
            src = small[None] if self.channels == 1 else cv2.cvtColor(small, cv2.COLOR_GRAY2BGR).transpose(2, 0, 1)
            if self.channels == 3 and self.color_order == "RGB":
                src = src[::-1]
        elif self.color_order == "GRAY":
            src = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)[None]
        elif self.color_order == "RGB":
            src = small.transpose(2, 0, 1)[::-1]  # views only; the multiply below does the one copy
        else:
            src = small.transpose(2, 0, 1)
        np.multiply(src, self._mul, out=out, casting="unsafe")
        out += self._add

    def preprocess(self, frame_bgr: np.ndarray) -> np.ndarray:
        """One BGR frame -> ``(1, C, H, W)`` float32 model input, from metadata alone."""
        return self.prepare(frame_bgr)[0]

    def _matches_blob(self, small: np.ndarray) -> bool:
        return self._blob is not None and (small.ndim == 3) == (self.channels == 3)

    def prepare(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like ``preprocess`` but also returns the small uint8 resized crop (for dedup fingerprints)."""
        small = self.resize(frame_bgr)
        if self._matches_blob(small):
            # One C++ pass: colour swap, (x - mean/scale) * scale/std, HWC -> NCHW (5 vs 9 us at 64x64x3).
            return cv2.dnn.blobFromImageWithParams(small, self._blob), small
        out = np.empty((1, self.channels, self.size[1], self.size[0]), dtype=np.float32)
        self._to_chw_into(small, out[0])
        return out, small

    def preprocess_batch(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Several frames -> ``(N, C, H, W)`` float32 in one buffer."""
        return self.batch_from_small([self.resize(f) for f in frames])

    def batch_from_small(self, smalls: Sequence[np.ndarray]) -> np.ndarray:
        """Already resized crops (``resize`` output) -> ``(N, C, H, W)`` float32 in one buffer."""
        if smalls and all(self._matches_blob(sm) for sm in smalls):
            return cv2.dnn.blobFromImagesWithParams(smalls, self._blob)
        out = np.empty((len(smalls), self.channels, self.size[1], self.size[0]), dtype=np.float32)
        for i, sm in enumerate(smalls):
            self._to_chw_into(sm, out[i])
        return out

    # -- inference -----------------------------------------------------------------------------------------
    def run(self, batch: np.ndarray) -> np.ndarray:
        """The raw graph output for a preprocessed batch (logits or probabilities, as exported)."""
        if self.max_batch is not None and batch.shape[0] > self.max_batch:
            # Fixed-batch graph: feed it in slices rather than refusing micro-batches.
            parts = [self.run(batch[i : i + self.max_batch]) for i in range(0, batch.shape[0], self.max_batch)]
            return np.concatenate(parts, axis=0)
        return self.session.run(self._output_names, {self._input_name: batch})[0]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, K)`` for a preprocessed batch (softmax applied when the graph gives logits)."""
        out = self.run(batch)
        return softmax(out) if self.outputs_logits else np.asarray(out, dtype=np.float32)

    def _prediction(self, p: np.ndarray, h: float) -> Prediction:
        i = int(p.argmax())
        return Prediction(p, i, self.labels[i], float(p[i]), h, self.labels, self.topk)

    def classify(self, x: np.ndarray) -> Prediction:
        """Batch-1 fast path: run, softmax, entropy and top-1 for one preprocessed frame in plain Python.

        For small heads the per-frame numpy calls (softmax, argsort, ...) cost more than the arithmetic;
        one ``tolist`` and a few list operations keep the post-processing at a few microseconds. The
        entropy comes from the softmax's own terms: with z = logit - max and t = sum(exp z),
        log p_i = z_i - log t, so H = log t - sum(p_i * z_i), without a logarithm per class.
        """
        out = self.run(x)
        if self.num_classes > 64 or out.shape[0] != 1 or self.num_classes < 2:
            return self.predictions(softmax(out) if self.outputs_logits else np.asarray(out, dtype=np.float32))[0]
        row = out[0].tolist()
        if self.outputs_logits:
            # H = log t - sum(p_i z_i) with z_i = v_i - m and sum(p_i) = 1, i.e. log t + m - sum(e_i v_i) / t.
            m = max(row)
            e = [math.exp(v - m) for v in row]
            t = sum(e)
            h = math.log(t) + m - sum(map(operator.mul, e, row)) / t
            inv = 1.0 / t
            row = [v * inv for v in e]
        else:
            h = -sum([v * math.log(v) for v in row if v > 0.0])
        h /= self._log_k
        h = 0.0 if h < 0.0 else (1.0 if h > 1.0 else h)
        conf = max(row)
        i = row.index(conf)
        return Prediction(np.array(row, dtype=np.float32), i, self.labels[i], conf, h, self.labels, self.topk)

    def predictions(self, probs: np.ndarray) -> list[Prediction]:
        """Wrap rows of probabilities as ``Prediction`` objects."""
        ents = entropy(probs).tolist()
        return [self._prediction(row, h) for row, h in zip(probs, ents)]

    def infer(self, frames: Sequence[np.ndarray] | np.ndarray) -> list[Prediction]:
        """Preprocess and classify one frame (HxWx3) or a micro-batch (list of frames) in one ORT call."""
        if isinstance(frames, np.ndarray) and frames.ndim in (2, 3) and frames.dtype == np.uint8:
            frames = [frames]
        batch = self.preprocess_batch(frames)  # type: ignore[arg-type]
        return self.predictions(self.predict(batch))

    def smoke_test(self, frames: Sequence[np.ndarray] = ()) -> None:
        """Raise ``ModelError("smoke_test", ...)`` unless the model gives finite probabilities of the right shape
        on the given frames plus a black and a mid-grey frame (cheap insurance before a swap)."""
        h = max(self.size[1], (self.roi[1] + self.roi[3]) if self.roi else 0)
        w = max(self.size[0], (self.roi[0] + self.roi[2]) if self.roi else 0)
        tests = list(frames) + [np.zeros((h, w, 3), np.uint8), np.full((h, w, 3), 127, np.uint8)]
        try:
            batch = self.preprocess_batch(tests)
            probs = self.predict(batch)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError("smoke_test", f"{self.path}: inference failed: {type(exc).__name__}: {exc}") from None
        if probs.shape != (len(tests), self.num_classes):
            raise ModelError("smoke_test", f"{self.path}: output shape {probs.shape}, expected {(len(tests), self.num_classes)}")
        if not np.all(np.isfinite(probs)):
            raise ModelError("smoke_test", f"{self.path}: non-finite outputs on {int((~np.isfinite(probs).all(axis=1)).sum())} of {len(tests)} frames")
        sums = probs.sum(axis=1)
        if np.any(probs < -1e-4) or not np.allclose(sums, 1.0, atol=1e-3):
            raise ModelError("smoke_test", f"{self.path}: outputs are not probabilities (row sums {sums.round(3).tolist()})")

    def __repr__(self) -> str:
        return f"EdgeModel(version={self.version!r}, arch={self.meta.architecture!r}, input={self.size}x{self.channels}, classes={self.num_classes})"


@dataclass(frozen=True)
class CalibrationConfig:
    """Test-time input calibration (see the module docstring).

    ``mode``: "off"; "drift" = engage when the edge's drift signal fires, then follow the light; "always" =
    follow the light from the moment the reference is complete. ``reference`` frames (the camera's first)
    define normal; the current statistics come from the last ``window`` frames and the correction is
    re-estimated every ``every`` frames while engaged. Gains are kept within [1/max_gain, max_gain].
    """

    mode: str = "off"
    reference: int = 150
    window: int = 45
    every: int = 15
    max_gain: float = 3.0
    release_below: float = 0.03  # |gain - 1| and |offset|/255 under this: the map is identity, disengage

    def __post_init__(self) -> None:
        if self.mode not in ("off", "drift", "always"):
            raise ValueError(f"calibration mode must be off, drift or always, got {self.mode!r}")
        if self.reference < 1 or self.window < 1 or self.every < 1:
            raise ValueError("calibration reference, window and every must be >= 1")


class InputCalibration:
    """Per-camera input statistics and the per-channel affine map between now and the reference.

    Lives in the :class:`ModelSlot` (it belongs to the camera, not to a model version: a model trained on
    calibrated uploads expects calibrated input), which applies it to every model it installs.
    """

    def __init__(self, config: CalibrationConfig | None = None) -> None:
        self.config = config or CalibrationConfig()
        self.frames = 0
        self._ref = np.zeros(0)          # per-channel sums of mean and mean-of-squares over the reference
        self._ref_n = 0
        self._win: np.ndarray | None = None  # (window, 2C) per-frame mean and mean-of-squares
        self._wi = 0
        self._wn = 0
        self.engaged = False
        self.engagements = 0
        self.gain: np.ndarray | None = None
        self.offset: np.ndarray | None = None
        self._since = 0

    @property
    def enabled(self) -> bool:
        return self.config.mode != "off"

    def observe(self, small: np.ndarray) -> None:
        """Add one frame's model-sized crop (uint8 BGR or grey) to the statistics."""
        mean, std = cv2.meanStdDev(small)
        m = mean.reshape(-1)
        row = np.concatenate([m, std.reshape(-1) ** 2 + m * m])
        self.frames += 1
        self._since += 1
        if self._ref_n < self.config.reference:
            self._ref = row if self._ref_n == 0 else self._ref + row
            self._ref_n += 1
        if self._win is None:
            self._win = np.zeros((self.config.window, len(row)))
        self._win[self._wi] = row
        self._wi = (self._wi + 1) % self.config.window
        self._wn = min(self._wn + 1, self.config.window)

    @staticmethod
    def _moments(sums: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        c = len(sums) // 2
        mu = sums[:c] / n
        sd = np.sqrt(np.maximum(sums[c:] / n - mu * mu, 1e-6))
        return mu, sd

    def correction(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(gain, offset) mapping the recent window's statistics onto the reference's, or None if not ready."""
        if self._ref_n < self.config.reference or self._win is None or self._wn < self.config.window:
            return None
        mu0, sd0 = self._moments(self._ref, self._ref_n)
        mu1, sd1 = self._moments(self._win[: self._wn].sum(0), self._wn)
        g = np.clip(sd0 / sd1, 1.0 / self.config.max_gain, self.config.max_gain)
        return g, mu0 - g * mu1

    def update(self, drift_active: bool) -> bool:
        """Engage / refresh / disengage after a frame; True when the correction changed (apply it)."""
        cfg = self.config
        if cfg.mode == "off":
            return False
        want = self.engaged or cfg.mode == "always" or drift_active
        if not want or (self.engaged and self._since < cfg.every):
            return False
        corr = self.correction()
        if corr is None:
            return False
        self._since = 0
        g, b = corr
        identity = bool(np.all(np.abs(g - 1.0) < cfg.release_below) and np.all(np.abs(b) < cfg.release_below * 255))
        if identity:
            if self.engaged:
                self.release()
                return True
            return False
        if not self.engaged:
            self.engagements += 1
        self.engaged, self.gain, self.offset = True, g, b
        return True

    def release(self) -> None:
        """Back to the plain model input (the statistics are kept)."""
        self.engaged, self.gain, self.offset = False, None, None

    def apply(self, model: "EdgeModel") -> None:
        model.set_input_correction(self.gain if self.engaged else None, self.offset if self.engaged else None)

    def stats(self) -> dict[str, object]:
        """For the stats topic: mode, whether engaged, how often, and the current per-channel map."""
        return {"mode": self.config.mode, "engaged": self.engaged, "engagements": self.engagements,
                "frames": self.frames, "reference_frames": self._ref_n,
                "gain": None if self.gain is None else [round(float(v), 4) for v in self.gain],
                "offset": None if self.offset is None else [round(float(v), 2) for v in self.offset]}


class ModelSlot:
    """The active and previous model, swapped atomically between frames.

    Readers (the frame loop) just read ``slot.active`` - one attribute load, atomic under the GIL - and use
    that object for the whole frame/micro-batch, so a swap never changes a model mid-frame. Writers
    (``swap``/``rollback``, from the updater thread) are serialised by a lock; the expensive part (load +
    validate + smoke test) happens before the lock, so the loop never waits on it. ``generation``
    increments on every change so the loop can notice a swap (e.g. to reset drift and dedup state).
    """

    def __init__(self, model: EdgeModel | None = None, *, threads: int = 1, roi: Sequence[int] | None = None,
                 keep_frames: int = 4, observe_every: int = 50, calibration: InputCalibration | None = None) -> None:
        self.calibration = calibration  # the camera's input calibration: applied to every model installed here
        if model is not None and calibration is not None:
            calibration.apply(model)
        self.active: EdgeModel | None = model
        self.previous: EdgeModel | None = None
        self.generation = 0
        self.threads = threads
        self.roi = roi
        self._lock = threading.Lock()
        self._recent: deque[np.ndarray] = deque(maxlen=max(0, keep_frames))
        self._observe_every = max(1, observe_every)
        self._seen = 0

    def observe(self, frame: np.ndarray) -> None:
        """Keep a copy of every ``observe_every``-th frame for smoke-testing the next model on real input."""
        self._seen += 1
        if self._recent.maxlen and (self._seen % self._observe_every == 1 or len(self._recent) == 0):
            self._recent.append(np.array(frame, copy=True))

    def load(self, path: str | os.PathLike[str]) -> EdgeModel:
        """Load + validate + smoke-test a model with this slot's settings, without installing it."""
        model = EdgeModel.load(path, threads=self.threads, roi=self.roi)
        model.smoke_test(list(self._recent))
        return model

    def swap(self, new: str | os.PathLike[str] | EdgeModel) -> EdgeModel:
        """Make ``new`` (a path or a loaded model) active, keeping the current one as ``previous``.

        Raises ``ModelError`` (and leaves the active model untouched) if it fails to load, validate or
        pass the smoke test.
        """
        model = new if isinstance(new, EdgeModel) else self.load(new)
        if isinstance(new, EdgeModel):
            model.smoke_test(list(self._recent))
        if self.calibration is not None:
            self.calibration.apply(model)
        with self._lock:
            self.previous, self.active = self.active, model
            self.generation += 1
        return model

    def rollback(self) -> EdgeModel:
        """Switch back to the previous model (the current one becomes ``previous``)."""
        with self._lock:
            if self.previous is None:
                raise ModelError("no_previous", "no previous model to roll back to")
            self.previous, self.active = self.active, self.previous
            if self.calibration is not None and self.active is not None:
                self.calibration.apply(self.active)
            self.generation += 1
            return self.active  # type: ignore[return-value]

    def get(self) -> EdgeModel:
        """The active model, or ModelError when none is loaded yet."""
        m = self.active
        if m is None:
            raise ModelError("no_model", "no model loaded")
        return m
