"""The per-frame work of the edge, apart from I/O: preprocess -> infer -> score -> drift -> sampling decision.

The node runs it on every frame and ``bench/edge_path.py`` measures exactly this code, so the benchmark's
"full edge path" is the one that ships. Batch 1 takes the plain-Python fast path (``EdgeModel.classify``,
``score_prediction``): for small heads per-call numpy overhead would cost more than the arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.drift import DriftMonitor
from edge.model import ModelSlot, Prediction
from edge.sampler import Decision, Sampler
from edge.uncertainty import score as score_batch, score_prediction


@dataclass(slots=True)
class Result:
    """One frame's outcome: the prediction, the sampling decision, and the model-sized crop (for uploads)."""

    prediction: Prediction
    decision: Decision
    small: np.ndarray


class Pipeline:
    """Scores frames with the slot's active model and decides which to upload."""

    def __init__(self, slot: ModelSlot, sampler: Sampler, drift: DriftMonitor, uncertainty: str = "margin") -> None:
        self.slot = slot
        self.sampler = sampler
        self.drift = drift
        self.uncertainty = uncertainty
        self._generation = slot.generation

    def _check_swap(self) -> None:
        if self.slot.generation != self._generation:
            # A new model means new confidence levels and new questions worth asking about the same scene.
            self._generation = self.slot.generation
            self.drift.reset()
            self.sampler.reset_dedup()

    def _calibrate(self, model: object, smalls: list[np.ndarray]) -> None:
        """Feed the camera's input calibration (if enabled) and apply a changed correction to the model: the
        next frame is classified with it (edge.model.InputCalibration)."""
        cal = self.slot.calibration
        if cal is None or not cal.enabled:
            return
        for sm in smalls:
            cal.observe(sm)
        if cal.update(self.drift.active):
            cal.apply(model)  # type: ignore[arg-type]

    def step(self, image: np.ndarray) -> Result:
        """One frame, batch 1: the latency path."""
        self._check_swap()
        model = self.slot.get()
        x, small = model.prepare(image)
        pred = model.classify(x)
        score = score_prediction(pred, self.uncertainty)
        self.drift.update(pred.confidence, pred.entropy)
        self._calibrate(model, [small])
        return Result(pred, self.sampler.decide(score, small, boost=self.drift.boost, label=pred.label), small)

    def step_batch(self, images: list[np.ndarray]) -> list[Result]:
        """A micro-batch in one inference call: the throughput path."""
        if len(images) == 1:
            return [self.step(images[0])]
        self._check_swap()
        model = self.slot.get()
        smalls = [model.resize(im) for im in images]
        probs = model.predict(model.batch_from_small(smalls))
        preds = model.predictions(probs)  # computes each row's entropy once, for drift and the entropy score
        ents = np.array([p.entropy for p in preds])
        scores = ents if self.uncertainty == "entropy" else score_batch(probs, self.uncertainty)
        self.drift.update(probs.max(axis=1), ents)
        self._calibrate(model, smalls)
        boost = self.drift.boost
        return [Result(p, self.sampler.decide(float(s), sm, boost=boost, label=p.label), sm)
                for p, s, sm in zip(preds, scores, smalls)]
