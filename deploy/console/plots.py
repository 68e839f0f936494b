"""Server-side pictures for the models page (matplotlib, Agg): accuracy over versions, confusion matrices.

Why server-side PNGs: the same matplotlib the demo report uses, no charting JavaScript to vendor, and the
picture a person downloads is the one they saw.
"""
from __future__ import annotations

import io
from typing import Any

__all__ = ["accuracy_png", "confusion_png"]


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def accuracy_png(versions: list[dict[str, Any]]) -> bytes:
    """Held-out accuracy and macro-F1 of each registered version (as measured when it was gated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.0))
    names = [v["version"] for v in versions]
    for key, style in (("accuracy", "o-"), ("macro_f1", "s--")):
        ys = [v["metrics"].get(key) for v in versions]
        xs = [i for i, y in enumerate(ys) if isinstance(y, (int, float))]
        ax.plot(xs, [ys[i] for i in xs], style, label=key.replace("_", "-"))
    for i, v in enumerate(versions):
        if v.get("status") != "promoted":
            ax.axvline(i, color="0.85", lw=6, zorder=0)
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 12 else 0, fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("held-out")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("held-out accuracy over versions", fontsize=10)
    return _png(fig)


def confusion_png(cm: dict[str, Any]) -> bytes:
    """Rows: true class, columns: predicted class; counts in the cells, colour = row-normalised share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels, pred = cm["labels"], cm.get("predicted", cm["labels"])
    m = np.asarray(cm["matrix"], dtype=float) if cm["matrix"] else np.zeros((len(labels), len(labels)))
    m = m[:, : len(labels)]
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n, 1.0 + 0.5 * n))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), [lab if lab in pred else f"({lab})" for lab in labels], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{cm['version']}: {cm['n']} held-out samples", fontsize=9)
    return _png(fig)
