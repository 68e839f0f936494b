"""Data in and out: labelled samples as an ImageFolder tree or Label Studio tasks; labels back from a Label
Studio export or a ``sample_id,label`` CSV. Used by the console's data page and ``edgeloop console
export|import``; everything goes through the trainer's HTTP API (:class:`TrainerClient`).

ImageFolder: ``<class>/<sample id>.<jpg|png>`` for every labelled sample, and ``samples.csv``
(``sample_id,label,device,model_version,split``; split = train or heldout, as the trainer assigned it).

Label Studio (its "Basic Label Studio JSON format", one task per sample): ``tasks.json`` with
``data.image`` = ``/data/local-files/?d=images/<file>`` (serve the export folder as Label Studio's local
files document root), ``data.sample_id``, the edge's top prediction as a ``predictions`` entry (score =
its probability) and, for labelled samples, the label as an ``annotations`` entry; ``labeling_config.xml``
is an image-classification config whose ``Choices`` name (``choice``) the tasks use. By default only
labelled samples are exported; ``include_unlabelled`` adds the waiting ones (with predictions only) so a
team can label them in Label Studio and import the result here.

Import reads a Label Studio export (JSON: full tasks with ``annotations``, or JSON-MIN rows with a
``choice`` field) or a CSV, and sends the labels in batches; unknown classes are refused per row (reason
``unknown_label``) unless ``new_classes`` is set.
"""
from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from .trainer_client import TrainerClient

__all__ = ["DirSink", "ZipSink", "export_imagefolder", "export_labelstudio", "parse_csv", "parse_labelstudio",
           "parse_labels", "import_labels", "labeling_config"]

_EXT = {"image/jpeg": ".jpg", "image/png": ".png"}
IMPORT_BATCH = 5000


class Sink(Protocol):
    def write(self, name: str, data: bytes) -> None: ...


class DirSink:
    """Files under a directory (created; existing files are replaced)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def write(self, name: str, data: bytes) -> None:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


class ZipSink:
    """Members of a zip archive written to a binary file object."""

    def __init__(self, fh: Any) -> None:
        self.zip = zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED)  # images are compressed already

    def write(self, name: str, data: bytes) -> None:
        self.zip.writestr(name, data)

    def close(self) -> None:
        self.zip.close()


def iter_samples(client: TrainerClient, status: str = "labelled", page: int = 1000) -> Iterator[dict[str, Any]]:
    after = 0
    while True:
        rows = client.samples(status=status, after=after, limit=page)
        yield from rows
        if len(rows) < page:
            return
        after = rows[-1]["rowid"]


def _file_name(s: dict[str, Any]) -> str:
    return s["id"] + _EXT.get(s.get("content_type", ""), ".bin")


def export_imagefolder(client: TrainerClient, sink: Sink) -> dict[str, int]:
    """Every labelled sample under ``<label>/``; returns counts per class."""
    counts: Counter[str] = Counter()
    rows = io.StringIO()
    w = csv.writer(rows)
    w.writerow(["sample_id", "label", "device", "model_version", "split"])
    for s in iter_samples(client, "labelled"):
        data, _ = client.image(s["id"])
        sink.write(f"{s['label']}/{_file_name(s)}", data)
        w.writerow([s["id"], s["label"], s["device"], s["model_version"], "heldout" if s.get("heldout") else "train"])
        counts[s["label"]] += 1
    sink.write("samples.csv", rows.getvalue().encode())
    return dict(counts)


def labeling_config(classes: list[str]) -> str:
    from xml.sax.saxutils import quoteattr

    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (f'<View>\n  <Image name="image" value="$image"/>\n  <Choices name="choice" toName="image" '
            f'choice="single" showInline="true">\n{choices}\n  </Choices>\n</View>\n')


def _choice(label: str) -> dict[str, Any]:
    return {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [label]}}


def export_labelstudio(client: TrainerClient, sink: Sink, include_unlabelled: bool = False) -> dict[str, int]:
    """``tasks.json`` + ``images/`` + ``labeling_config.xml``; returns how many tasks of each kind."""
    tasks: list[dict[str, Any]] = []
    n = Counter()
    for status in ("labelled", "unlabelled") if include_unlabelled else ("labelled",):
        for s in iter_samples(client, status):
            name = _file_name(s)
            sink.write(f"images/{name}", client.image(s["id"])[0])
            task: dict[str, Any] = {"data": {"image": f"/data/local-files/?d=images/{name}", "sample_id": s["id"],
                                             "device": s["device"], "reason": s["reason"], "p_select": s["p_select"]}}
            if s.get("prediction"):
                top, p = s["prediction"][0]
                task["predictions"] = [{"model_version": s["model_version"], "score": p, "result": [_choice(top)]}]
            if s.get("label"):
                task["annotations"] = [{"result": [_choice(s["label"])], "was_cancelled": False}]
            tasks.append(task)
            n[status] += 1
    sink.write("tasks.json", json.dumps(tasks, indent=1).encode())
    sink.write("labeling_config.xml", labeling_config(client.classes()["known"]).encode())
    return dict(n)


# -- import -------------------------------------------------------------------------------------------------------
def parse_csv(text: str) -> list[tuple[str, str]]:
    """``sample_id,label`` rows (a header row naming those columns is skipped; blank rows ignored)."""
    out: list[tuple[str, str]] = []
    for i, row in enumerate(csv.reader(io.StringIO(text))):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise ValueError(f"CSV line {i + 1}: expected sample_id,label, got {row!r}")
        if i == 0 and cells[0].lower() in ("sample_id", "id") and cells[1].lower() == "label":
            continue
        out.append((cells[0], cells[1]))
    return out


def _task_sample_id(task: dict[str, Any]) -> str | None:
    data = task.get("data", task)
    if isinstance(data.get("sample_id"), str):
        return data["sample_id"]
    image = data.get("image")
    if isinstance(image, str) and image:  # ".../images/<id>.jpg" -> "<id>"
        stem = image.rsplit("/", 1)[-1].rsplit("=", 1)[-1]
        return stem.rsplit(".", 1)[0] if "." in stem else stem
    return None


def _task_label(task: dict[str, Any]) -> str | None:
    if isinstance(task.get("choice"), str):  # JSON-MIN
        return task["choice"]
    if isinstance(task.get("choice"), dict) and task["choice"].get("choices"):
        return str(task["choice"]["choices"][0])
    for ann in reversed(task.get("annotations") or []):  # the latest annotation that was not cancelled
        if not isinstance(ann, dict) or ann.get("was_cancelled"):
            continue
        for r in ann.get("result") or []:
            if isinstance(r, dict) and r.get("type") == "choices" and (r.get("value") or {}).get("choices"):
                return str(r["value"]["choices"][0])
    return None


def parse_labelstudio(text: str) -> tuple[list[tuple[str, str]], int]:
    """(sample id, label) pairs from a Label Studio JSON export, and how many tasks carried no label."""
    try:
        tasks = json.loads(text)
    except ValueError as e:
        raise ValueError(f"not a Label Studio JSON export: {e}") from None
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise ValueError("a Label Studio export is a JSON list of tasks")
    pairs, skipped = [], 0
    for t in tasks:
        if not isinstance(t, dict):
            raise ValueError("a Label Studio export is a JSON list of task objects")
        sid, label = _task_sample_id(t), _task_label(t)
        if sid and label:
            pairs.append((sid, label))
        else:
            skipped += 1
    return pairs, skipped


def parse_labels(text: str, fmt: str = "auto") -> tuple[list[tuple[str, str]], int]:
    """``fmt``: csv, labelstudio or auto (JSON if it starts with ``[`` or ``{``)."""
    if fmt == "auto":
        fmt = "labelstudio" if text.lstrip()[:1] in ("[", "{") else "csv"
    if fmt == "csv":
        return parse_csv(text), 0
    if fmt == "labelstudio":
        return parse_labelstudio(text)
    raise ValueError(f"unknown import format {fmt!r}: csv, labelstudio or auto")


def import_labels(client: TrainerClient, pairs: list[tuple[str, str]], new_classes: bool = False) -> dict[str, Any]:
    """Send the labels in batches; returns applied count and outcome counts (labelled, unknown_label, ...)."""
    counts: Counter[str] = Counter()
    applied = 0
    refused: list[dict[str, Any]] = []
    for i in range(0, len(pairs), IMPORT_BATCH):
        res = client.label_batch(pairs[i:i + IMPORT_BATCH], new_classes=new_classes)
        applied += res["applied"]
        counts.update(res["counts"])
        refused += [r for r in res["results"] if r["status"] != "labelled"][: 50 - len(refused)]
    return {"applied": applied, "counts": dict(counts), "refused": refused}
