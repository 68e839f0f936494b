"""``sim:parts`` — a quality-inspection station on a conveyor.

One metal part sits in a fixed ROI in the middle of a moving belt; the camera
must tell ``ok`` from ``scratch``, ``dent`` and ``stain`` (and later ``crack``,
which only appears through a ``newclass:crack`` drift).

Everything expensive — belt strip, part sprites with metallic texture and
alpha, dent shading maps, stain masks — is computed once per source from its
seed. A frame is then: slice the belt (stripes move with the frame index), warp
one RGBA sprite into the ROI (random rotation, scale, offset), draw the defect
with a few OpenCV primitives, alpha-composite, add sensor noise. Defect size and
contrast vary widely and many are small and faint on purpose, so a small CNN
gets high but not perfect accuracy.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from .assets import cached
from .effects import NoiseTile

__all__ = ["PartsRenderer"]

_LIGHT = np.array([-0.6, -0.8])  # light from the top-left (x, y), unit-ish


def _brushed(size: int, rng: np.random.Generator, angle: float, strength: float) -> np.ndarray:
    """Directional streak texture (brushed metal), zero-mean float32: noise smeared
    along x by a long box filter, then rotated to ``angle``."""
    big = int(size * 1.5)
    noise = rng.normal(0, 1, (big, big)).astype(np.float32)
    tex = cv2.blur(noise, (31, 1), borderType=cv2.BORDER_REFLECT)
    tex = tex / (tex.std() + 1e-6) + 0.35 * cv2.GaussianBlur(noise, (0, 0), 1.0) / 0.28
    rot = cv2.getRotationMatrix2D((big / 2, big / 2), angle, 1.0)
    rot[:, 2] -= (big - size) / 2
    tex = cv2.warpAffine(tex, rot, (size, size), borderMode=cv2.BORDER_REFLECT)
    tex /= tex.std() + 1e-6
    return tex * strength


def _emboss(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Lit bevel from a mask: derivative of the blurred mask along the light."""
    blur = cv2.GaussianBlur(mask, (0, 0), sigma)
    gx = cv2.Sobel(blur, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(blur, cv2.CV_32F, 0, 1, ksize=3)
    return -(gx * _LIGHT[0] + gy * _LIGHT[1])


def _make_sprite(shape: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One part at 2x resolution, downsampled: (BGRA uint8 with its soft shadow, interior points (N, 2))."""
    big = size * 2
    c = big / 2.0
    body = np.zeros((big, big), np.float32)
    holes = np.zeros((big, big), np.float32)
    r = big * 0.39
    if shape == "disc":
        cv2.circle(body, (int(c), int(c)), int(r), 1.0, -1, cv2.LINE_AA)
        cv2.circle(holes, (int(c), int(c)), int(r * rng.uniform(0.18, 0.3)), 1.0, -1, cv2.LINE_AA)
    elif shape == "plate":
        hw, hh = r * rng.uniform(0.95, 1.05), r * rng.uniform(0.62, 0.8)
        rad = int(r * 0.22)
        x0, y0, x1, y1 = int(c - hw), int(c - hh), int(c + hw), int(c + hh)
        cv2.rectangle(body, (x0 + rad, y0), (x1 - rad, y1), 1.0, -1)
        cv2.rectangle(body, (x0, y0 + rad), (x1, y1 - rad), 1.0, -1)
        for px, py in ((x0 + rad, y0 + rad), (x1 - rad, y0 + rad), (x0 + rad, y1 - rad), (x1 - rad, y1 - rad)):
            cv2.circle(body, (px, py), rad, 1.0, -1, cv2.LINE_AA)
            cv2.circle(holes, (px, py), int(rad * 0.45), 1.0, -1, cv2.LINE_AA)
    else:  # hex plate
        pts = np.array(
            [(c + r * math.cos(math.pi / 3 * k + math.pi / 6), c + r * math.sin(math.pi / 3 * k + math.pi / 6)) for k in range(6)],
            np.int32,
        )
        cv2.fillPoly(body, [pts], 1.0, cv2.LINE_AA)
        cv2.circle(holes, (int(c), int(c)), int(r * rng.uniform(0.25, 0.35)), 1.0, -1, cv2.LINE_AA)
    alpha = np.clip(body - holes, 0, 1)

    # Metal: base tint, brushed or turned texture, light gradient, specular band, bevel.
    # BGR: steel, aluminium, dark steel, bluish zinc, brass.
    metals = [(170, 170, 172), (186, 184, 181), (136, 138, 141), (180, 171, 163), (115, 150, 178)]
    base = np.array(metals[int(rng.integers(len(metals)))], np.float32) + rng.normal(0, 2, 3)
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
    if shape == "disc":
        rr = np.hypot(xx - c, yy - c)
        tex = np.sin(rr * rng.uniform(0.8, 1.6)) * 2.0 + _brushed(big, rng, rng.uniform(0, 180), 2.0)
    else:
        tex = _brushed(big, rng, rng.uniform(0, 180), rng.uniform(4.0, 7.0))
    grad = ((xx - c) * _LIGHT[0] + (yy - c) * _LIGHT[1]) / big * rng.uniform(30, 55)
    theta = rng.uniform(0, math.pi)
    d = (xx - c) * math.cos(theta) + (yy - c) * math.sin(theta) - rng.uniform(-0.3, 0.3) * big
    spec = np.exp(-(d / (big * rng.uniform(0.06, 0.14))) ** 2) * rng.uniform(15, 35)
    bevel = _emboss(alpha, 3.0) * 2.0 * big / 10
    shade = (tex + grad + spec + np.clip(bevel, -60, 60)).astype(np.float32)
    img = np.clip(base[None, None, :] + shade[:, :, None], 0, 255)
    # Slightly darker rim so the silhouette reads as a thick part on the belt.
    rim = np.clip(alpha - cv2.erode(alpha, np.ones((7, 7), np.uint8)), 0, 1)
    img *= (1.0 - 0.25 * rim)[:, :, None]

    small = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    a_small = cv2.resize(alpha, (size, size), interpolation=cv2.INTER_AREA)
    # Soft contact shadow all around (diffuse ring light), baked into the sprite as
    # black with partial alpha, so a frame needs one warp and one blend.
    halo = cv2.GaussianBlur(cv2.dilate(a_small, np.ones((3, 3), np.uint8)), (0, 0), size / 45) * 0.6
    cover = a_small + (1.0 - a_small) * halo
    rgb = small * (a_small / np.maximum(cover, 1e-6))[:, :, None]
    bgra = np.dstack([np.clip(rgb, 0, 255), np.clip(cover * 255, 0, 255)]).astype(np.uint8)
    # Interior points safe for defects: solidly on metal, away from holes and the rim.
    inner = cv2.erode((a_small > 0.99).astype(np.uint8), np.ones((9, 9), np.uint8))
    ys, xs = np.nonzero(inner)
    points = np.stack([xs, ys], axis=1).astype(np.float32)
    return bgra, points


def _make_dent(radius: float, aspect: float, angle: float) -> np.ndarray:
    """Shading of a shallow depression lit from the top-left: dark rim towards the
    light, bright rim away from it, slightly dark floor; float32 in about [-1, 1]."""
    n = int(radius * 4 + 11) | 1
    m = np.zeros((n, n), np.float32)
    cv2.ellipse(m, (n // 2, n // 2), (max(1, int(radius)), max(1, int(radius * aspect))), angle, 0, 360, 1.0, -1, cv2.LINE_AA)
    m = cv2.GaussianBlur(m, (0, 0), max(0.8, radius * 0.3))
    shade = _emboss(m, 0.6)
    shade = shade / (np.abs(shade).max() + 1e-6)
    return (-shade - 0.25 * m).astype(np.float32)


def _make_stain(size: int, rng: np.random.Generator) -> np.ndarray:
    """Irregular soft-edged blob mask, float32 in [0, 1]."""
    n = int(size * 1.6 + 6) | 1
    m = np.zeros((n, n), np.float32)
    c = n / 2
    for _ in range(int(rng.integers(3, 8))):
        off = rng.normal(0, size * 0.15, 2)
        rad = size * rng.uniform(0.2, 0.38)
        cv2.ellipse(
            m, (int(c + off[0]), int(c + off[1])), (max(1, int(rad)), max(1, int(rad * rng.uniform(0.5, 1.0)))),
            rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA,
        )
    m = cv2.GaussianBlur(m, (0, 0), max(1.3, size * 0.08))
    # Mottled density, as oil or rust is never uniform.
    mottle = cv2.GaussianBlur(rng.uniform(0.6, 1.0, (n, n)).astype(np.float32), (0, 0), 1.5)
    return np.clip(m * mottle / max(1e-6, m.max()), 0, 1)


class PartsRenderer:
    """Draws conveyor frames with one part in a fixed ROI."""

    NAME = "parts"
    ALL_CLASSES = ["ok", "scratch", "dent", "stain", "crack"]
    INITIAL_CLASSES = ["ok", "scratch", "dent", "stain"]
    DEFAULT_PRIORS = {"ok": 0.55}  # the defects share the rest equally
    OPTIONS: dict[str, str] = {}

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """No renderer-specific options yet; the generic ones are checked by the scenario."""
        return {}

    @classmethod
    def initial_classes(cls, options: dict[str, Any]) -> list[str]:
        return list(cls.INITIAL_CLASSES)

    def __init__(self, width: int, height: int, seed: int, options: dict[str, Any] | None = None) -> None:
        self.width = width
        self.height = height
        self.__dict__.update(cached(("parts", width, height, seed), lambda: self._build(seed)))

    def _build(self, seed: int) -> dict[str, Any]:
        """Precompute belt frames, sprites, dent and stain maps (shared via the asset cache)."""
        width, height = self.width, self.height
        rng = np.random.default_rng([seed, 0xBE17])
        side = max(32, int(round(min(width, height) * 128 / 240)))
        self.roi = ((width - side) // 2, (height - side) // 2, side, side)
        self.belt_speed = max(1, int(round(3 * width / 320)))  # px per frame
        self._build_belt(rng)
        shapes = ["disc", "plate", "hex"]
        self.sprites = []
        for k in range(12):
            shape = shapes[k % 3]
            bgra, points = _make_sprite(shape, side, rng)
            self.sprites.append((shape, bgra, points))
        s = side / 128.0
        self.dents = [
            _make_dent(rad * s, rng.uniform(0.55, 1.0), rng.uniform(0, 180))
            for rad in np.linspace(3.0, 13.0, 24)
        ]
        self.stains = [_make_stain(int(sz * s), rng) for sz in np.linspace(10, 32, 24)]
        self.noise = NoiseTile(width, height, seed, sigma=3.5)
        self.scale = s
        return dict(self.__dict__)

    def _build_belt(self, rng: np.random.Generator) -> None:
        """A belt strip one stripe period wider than the frame; slicing it at a
        frame-dependent offset makes the stripes move."""
        w, h = self.width, self.height
        period = max(8, int(round(16 * w / 320))) * self.belt_speed
        strip_w = w + period
        top, bot = int(h * 0.1), int(h * 0.9)
        img = np.zeros((h, strip_w, 3), np.float32)
        # Rubber belt: dark, fine grain.
        grain = cv2.GaussianBlur(rng.normal(0, 1, (h, strip_w)).astype(np.float32), (0, 0), 0.8)
        belt = 62 + 6 * grain
        xs = np.arange(strip_w)
        stripe = ((xs % period) < max(2, period // 8)).astype(np.float32)
        stripe = cv2.GaussianBlur(stripe[None, :], (0, 0), 0.8)[0]
        belt = belt + 14 * stripe[None, :]
        img[:] = belt[:, :, None] * np.array([1.0, 1.02, 1.05], np.float32)
        # Side rails: brushed steel along the belt, with a dark gap.
        rail = 150 + 8 * cv2.GaussianBlur(rng.normal(0, 1, (h, 1)).astype(np.float32), (0, 0), 1.0)
        rail = np.repeat(rail, strip_w, axis=1)
        ys = np.arange(h, dtype=np.float32)[:, None]
        rail = rail + 30 * np.exp(-((ys - top * 0.45) / (top * 0.3 + 1)) ** 2) * (ys < top)
        for sl in (slice(0, top), slice(bot, h)):
            img[sl] = rail[sl, :, None] * np.array([1.0, 1.0, 0.98], np.float32)
        img[max(0, top - 3) : top] *= 0.35
        img[bot : bot + 3] *= 0.35
        # Uneven illumination across the height (lamp above the ROI).
        light = 1.0 + 0.12 * np.exp(-((ys - h / 2) / (h * 0.45)) ** 2) - 0.06
        img *= light[:, :, None]
        belt = np.clip(img, 0, 255).astype(np.uint8)
        self.period = period
        # One contiguous frame per belt phase: a frame then starts with one memcpy.
        self.belt_frames = [
            np.ascontiguousarray(belt[:, period - off : period - off + w])
            for off in range(0, period, self.belt_speed)
        ]

    # -- per-frame work -------------------------------------------------------

    def render(self, cls: str, rng: np.random.Generator, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Frame ``index`` showing a part of class ``cls``; returns (BGR image, info extras)."""
        img = self.belt_frames[index % len(self.belt_frames)].copy()
        x0, y0, side, _ = self.roi
        roi = img[y0 : y0 + side, x0 : x0 + side]

        k = int(rng.integers(len(self.sprites)))
        shape, bgra, points = self.sprites[k]
        angle, scale, dx, dy, gain = rng.random(5)
        m = cv2.getRotationMatrix2D((side / 2, side / 2), angle * 360.0, 0.82 + 0.2 * scale)
        m[:, 2] += ((dx - 0.5) * 0.12 * side, (dy - 0.5) * 0.12 * side)
        part = cv2.warpAffine(bgra, m, (side, side), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
        color = cv2.cvtColor(part, cv2.COLOR_BGRA2BGR)
        gain = 0.88 + 0.22 * gain
        if abs(gain - 1) > 0.01:
            color = cv2.convertScaleAbs(color, alpha=gain)
        extra: dict[str, Any] = {"part": shape}
        if cls != "ok":
            p = points[int(rng.integers(len(points)))]
            cx, cy = m[:, :2] @ p + m[:, 2]
            extra["defect"] = self._defect(color, cls, float(cx), float(cy), rng)
        else:
            self._benign(color, points, m, rng)

        a = part[:, :, 3].astype(np.float32)
        a *= 1.0 / 255.0
        roi[:] = cv2.blendLinear(color, roi, a, 1.0 - a)
        self.noise.add(img, self.noise.sigma, rng)
        return img, extra

    def _benign(self, color: np.ndarray, points: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> None:
        """Harmless marks on good parts (dust specks, a faint tool mark) so that
        'any mark = defect' is not a shortcut."""
        u = rng.random()
        if u < 0.35:
            for _ in range(int(rng.integers(1, 4))):
                p = points[int(rng.integers(len(points)))]
                cx, cy = m[:, :2] @ p + m[:, 2]
                v = int(rng.integers(60, 110))
                cv2.circle(color, (int(cx), int(cy)), 1, (v, v, v), -1, cv2.LINE_AA)
        elif u < 0.5:
            p = points[int(rng.integers(len(points)))]
            cx, cy = m[:, :2] @ p + m[:, 2]
            ang = rng.uniform(0, math.pi)
            ln = rng.uniform(10, 30) * self.scale
            d = (math.cos(ang) * ln / 2, math.sin(ang) * ln / 2)
            base = color[int(np.clip(cy, 0, color.shape[0] - 1)), int(np.clip(cx, 0, color.shape[1] - 1))].astype(int)
            c = tuple(int(v) for v in np.clip(base + rng.uniform(6, 12), 0, 255))
            cv2.line(color, (int(cx - d[0]), int(cy - d[1])), (int(cx + d[0]), int(cy + d[1])), c, 1, cv2.LINE_AA)

    def _defect(self, color: np.ndarray, cls: str, cx: float, cy: float, rng: np.random.Generator) -> dict[str, Any]:
        """Draw one defect of class ``cls`` centred near (cx, cy); returns its parameters."""
        h, w = color.shape[:2]
        s = self.scale
        ix, iy = int(np.clip(cx, 0, w - 1)), int(np.clip(cy, 0, h - 1))
        local = color[iy, ix].astype(np.float32)
        # Severity: skewed towards small, faint defects (the hard cases), with a floor so that a defect is
        # always there to be seen: without it ~5 % of defects were near-invisible and a small CNN stalled
        # in the low 80s instead of the 90-98 % an inspection task like this should allow.
        sev = float(0.15 + 0.85 * rng.random() ** 1.3)
        if cls == "scratch":
            n = 1 if rng.random() < 0.75 else int(rng.integers(2, 4))
            length = (18 + 40 * sev) * s
            contrast = 55 + 70 * sev
            thickness = 2 if sev > 0.3 else 1
            sign = 1.0 if rng.random() < 0.6 else -1.0
            base_ang = rng.uniform(0, math.pi)
            for _ in range(n):
                ang = base_ang + rng.normal(0, 0.12)
                ln = length * rng.uniform(0.6, 1.0)
                ox, oy = rng.normal(0, 3 * s, 2)
                x0, y0 = cx + ox - math.cos(ang) * ln / 2, cy + oy - math.sin(ang) * ln / 2
                x1, y1 = cx + ox + math.cos(ang) * ln / 2, cy + oy + math.sin(ang) * ln / 2
                bend = rng.normal(0, 1.5 * s)
                xm, ym = (x0 + x1) / 2 - math.sin(ang) * bend, (y0 + y1) / 2 + math.cos(ang) * bend
                pts = np.array([[x0, y0], [xm, ym], [x1, y1]], np.float32)
                col = tuple(float(v) for v in np.clip(local + sign * contrast, 0, 255))
                cv2.polylines(color, [np.round(pts * 16).astype(np.int32)], False, col, thickness, cv2.LINE_AA,
                              shift=4)
            return {"kind": "scratch", "severity": round(sev, 3), "n": n}
        if cls == "dent":
            k = int(sev * (len(self.dents) - 1) * 0.999 + rng.uniform(0, 0.999))
            k = min(k, len(self.dents) - 1)
            amp = 60 + 70 * sev
            self._add_patch(color, self.dents[k] * amp, cx, cy)
            return {"kind": "dent", "severity": round(sev, 3)}
        if cls == "stain":
            k = min(len(self.stains) - 1, int(sev * len(self.stains)))
            mask = self.stains[k] * (0.45 + 0.5 * sev * rng.uniform(0.8, 1.0))
            palette = [(40, 52, 70), (35, 75, 130), (55, 55, 55), (90, 70, 45), (30, 40, 50)]
            col = np.array(palette[int(rng.integers(len(palette)))], np.float32)
            self._blend_patch(color, mask, col, cx, cy)
            return {"kind": "stain", "severity": round(sev, 3)}
        if cls == "crack":
            contrast = 50 + 70 * sev
            col = tuple(float(v) for v in np.clip(local - contrast, 0, 255))
            ang = rng.uniform(0, 2 * math.pi)
            seg = int(5 + 7 * sev)
            pts = [(cx, cy)]
            for _ in range(seg):
                ang += rng.normal(0, 0.6)
                step = rng.uniform(2.5, 5.5) * s
                pts.append((pts[-1][0] + math.cos(ang) * step, pts[-1][1] + math.sin(ang) * step))
            lines = [np.array(pts, np.float32)]
            for _ in range(int(rng.integers(1, 3))):
                j = int(rng.integers(1, len(pts)))
                b_ang = ang + rng.choice([-1, 1]) * rng.uniform(0.6, 1.3)
                bp = [pts[j]]
                for _ in range(int(rng.integers(2, 5))):
                    b_ang += rng.normal(0, 0.5)
                    step = rng.uniform(2, 4.5) * s
                    bp.append((bp[-1][0] + math.cos(b_ang) * step, bp[-1][1] + math.sin(b_ang) * step))
                lines.append(np.array(bp, np.float32))
            cv2.polylines(color, [np.round(p * 16).astype(np.int32) for p in lines], False, col, 1, cv2.LINE_AA, shift=4)
            return {"kind": "crack", "severity": round(sev, 3)}
        raise ValueError(f"parts: unknown class {cls!r}")

    @staticmethod
    def _window(shape: tuple[int, ...], patch: np.ndarray, cx: float, cy: float):
        ph, pw = patch.shape[:2]
        x0, y0 = int(round(cx)) - pw // 2, int(round(cy)) - ph // 2
        h, w = shape[:2]
        ax0, ay0, ax1, ay1 = max(0, x0), max(0, y0), min(w, x0 + pw), min(h, y0 + ph)
        if ax1 <= ax0 or ay1 <= ay0:
            return None
        return (slice(ay0, ay1), slice(ax0, ax1)), (slice(ay0 - y0, ay1 - y0), slice(ax0 - x0, ax1 - x0))

    def _add_patch(self, color: np.ndarray, delta: np.ndarray, cx: float, cy: float) -> None:
        win = self._window(color.shape, delta, cx, cy)
        if win is None:
            return
        dst, src = win
        region = color[dst].astype(np.float32) + delta[src][:, :, None]
        color[dst] = np.clip(region, 0, 255).astype(np.uint8)

    def _blend_patch(self, color: np.ndarray, mask: np.ndarray, col: np.ndarray, cx: float, cy: float) -> None:
        win = self._window(color.shape, mask, cx, cy)
        if win is None:
            return
        dst, src = win
        a = mask[src][:, :, None]
        region = color[dst].astype(np.float32)
        color[dst] = (region + (col - region) * a).astype(np.uint8)
