"""Training data: labelled image folders, NATIX-style parquet and pseudo-labelled folders, as :class:`Sample` lists.

A data spec (one ``--data`` value, optionally ``DIR=W`` for a mixing weight) is a folder in one of three layouts:

1. **labelled folders** ``roadwork/`` (1) and ``no_roadwork/`` (0), optional ``SOURCES.tsv`` (columns ``file``,
   ``label``, ``source_repo``, ``source_path``, ``license``, ``notes`` and optionally ``kind`` = real|i2i|t2i|api →
   :attr:`Sample.condition`, ``parent`` = key or file name of the real image an i2i image was made from → same
   split group, ``generator``);
2. **NATIX-style parquet** (``*.parquet``: ``image`` as bytes or ``{"bytes": ...}``, ``label``, optional
   ``scene_description``, optional ``video_info.vid_id`` / ``video_info`` struct with ``vid_id``). Rows whose
   ``scene_description`` disagrees with the label (label 0 with a description, label 1 without) are dropped, as the
   validator's cache skips them (docs/protocol.md §2.3); all frames of one video share one split group;
3. **pseudo-labelled** ``soft_labels.jsonl``: ``{"file": "rel/path.jpg", "prob": 0.93, "confidence": 0.86, ...}``
   per line → ``target = prob``, ``label = prob >= 0.5``, ``condition = "pseudo"``; lines with ``confidence`` below
   ``min_confidence`` are dropped.

Sources (per-source metrics) are ``<folder>/<file-name prefix>`` for image files
(:func:`natix_miner.datasets.source_of`) and ``<folder>/<parquet stem>`` for parquet rows. Groups keep
near-duplicates on one side of a split: a file name ending in a frame number is grouped with the names sharing its
prefix in the same block of ``group_block`` numbers (GTSDB: nearby numbers are one drive, one roadwork site).
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from natix_miner.datasets import (
    IMAGE_EXTS,
    LABEL_DIRS,
    SOFT_LABELS,
    DatasetError,
    read_soft_labels,
    source_of,
)
from natix_miner.training.splits import grouped_folds, grouped_split

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

__all__ = [
    "DataError",
    "ImageUnreadable",
    "Sample",
    "SourceInfo",
    "grouped_folds",
    "grouped_split",
    "load_image",
    "load_image_bytes",
    "parse_spec",
    "sampling_weights",
    "scan_data",
    "scan_sources",
    "stem_group",
]

CONDITIONS = ("real", "i2i", "t2i", "api", "pseudo")


@dataclass(frozen=True)
class Sample:
    key: str  # stable unique id: "<folder>/<relative path>" or "<folder>/<file>.parquet#<row>"
    label: int  # hard label 0/1 (soft targets: 1 if target >= 0.5)
    target: float  # training target in [0, 1]: == label for hard labels, a probability for pseudo labels
    source: str  # per-source metrics: "<folder>/<file-name prefix>" or "<folder>/<parquet stem>"
    group: str  # split group: frames of one video, near-duplicates, an i2i image and its parent
    path: str | None = None  # image file, or None when the bytes live in parquet
    parquet: tuple[str, int] | None = None  # (parquet file, row index)
    weight: float = 1.0  # source mixing weight (--data DIR=W, --data-weight NAME=W)
    condition: str = "real"  # real | i2i | t2i | api | pseudo
    dataset: str = ""  # the --data folder name (class balance and splits are per data folder)
    licence: str = "unknown"


class DataError(DatasetError):
    """Refused training input; the message names the folder or file and what is wrong."""


class ImageUnreadable(DataError):
    """One image cannot be decoded (training loops skip and count these)."""


@dataclass
class SourceInfo:
    """What one data spec gave: for logs and provenance."""

    path: str
    name: str
    kind: str  # image-folder | parquet | pseudo
    weight: float
    n: int = 0
    roadwork: int = 0
    no_roadwork: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    licences: dict[str, int] = field(default_factory=dict)
    conditions: dict[str, int] = field(default_factory=dict)


def stem_group(stem: str, block: int) -> str:
    """``gtsdb_00461`` -> ``gtsdb_#15`` with block 30: numbered frames in one block share a group."""
    m = re.match(r"^(.*?)(\d+)$", stem)
    return f"{m.group(1)}#{int(m.group(2)) // block}" if m else stem


def parse_spec(spec: str) -> tuple[str, float]:
    """``DIR`` or ``DIR=W`` -> (DIR, W). A path that exists as given wins over the ``=W`` reading."""
    if "=" in spec and not Path(spec).expanduser().exists():
        d, _, w = spec.rpartition("=")
        try:
            weight = float(w)
        except ValueError:
            raise DataError(f"--data {spec}: expected DIR or DIR=WEIGHT (WEIGHT a number)") from None
        if not (weight > 0 and math.isfinite(weight)):
            raise DataError(f"--data {spec}: the weight must be a positive number")
        return d, weight
    return spec, 1.0


# ------------------------------------------------------------------------------------------- image folders
def _read_sources_tsv(root: Path) -> dict[str, dict[str, str]]:
    f = root / "SOURCES.tsv"
    if not f.is_file():
        return {}
    lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines:
        return {}
    header = [h.strip() for h in lines[0].split("\t")]
    if "file" not in header:
        logger.warning("{}: no 'file' column; ignored", f)
        return {}
    out = {}
    for line in lines[1:]:
        cols = line.split("\t")
        row = {h: (cols[i].strip() if i < len(cols) else "") for i, h in enumerate(header)}
        if row["file"]:
            out[row["file"]] = row
    return out


def _images_under(d: Path) -> list[Path]:
    return [f for f in sorted(d.rglob("*")) if f.suffix.lower() in IMAGE_EXTS and f.is_file()]


def _scan_folder(root: Path, weight: float, block: int) -> tuple[list[Sample], dict[str, int], dict[str, str]]:
    meta = _read_sources_tsv(root)
    out, parents = [], {}
    for sub, label in LABEL_DIRS.items():
        d = root / sub
        if not d.is_dir():
            logger.warning("{}: no {}/ subfolder (no {} images from this folder)", root, sub,
                           "roadwork" if label else "no-roadwork")
            continue
        files = _images_under(d)
        if not files:
            raise DataError(f"{d}: the {sub}/ class folder holds no images ({', '.join(sorted(IMAGE_EXTS))})")
        for f in files:
            rel = f.relative_to(root).as_posix()
            row = meta.get(rel, {})
            kind = (row.get("kind") or "real").lower()
            if kind not in CONDITIONS:
                raise DataError(f"{root / 'SOURCES.tsv'}: {rel}: kind {kind!r} is not one of {', '.join(CONDITIONS)}")
            key = f"{root.name}/{rel}"
            if row.get("parent"):
                parents[key] = row["parent"]
            out.append(Sample(key=key, label=label, target=float(label), source=f"{root.name}/{source_of(f.stem)}",
                              group=f"{root.name}/{stem_group(f.stem, block)}", path=str(f), weight=weight,
                              condition=kind, dataset=root.name, licence=row.get("license") or "unknown"))
    return out, {}, parents


# ------------------------------------------------------------------------------------------------ parquet
def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow is in the train extra
        raise DataError("reading parquet needs pyarrow (pip install 'natix-miner[train]')") from e
    return pq


def _vid_ids(table) -> list[Any] | None:
    names = table.column_names
    if "video_info.vid_id" in names:
        return table.column("video_info.vid_id").to_pylist()
    if "video_info" in names:
        return [(v or {}).get("vid_id") if isinstance(v, dict) else None for v in table.column("video_info").to_pylist()]
    return None


def _scan_parquet(root: Path, weight: float, block: int) -> tuple[list[Sample], dict[str, int], dict[str, str]]:
    pq = _pq()
    out, dropped = [], Counter()
    for f in sorted(root.rglob("*.parquet")):
        rel = f.relative_to(root).as_posix()
        try:
            schema_names = pq.read_schema(f).names
            cols = [c for c in ("label", "scene_description", "video_info", "video_info.vid_id", "license", "licence")
                    if c in schema_names]
            table = pq.read_table(f, columns=cols)
        except Exception as e:  # noqa: BLE001 - a corrupt file is refused with its name
            raise DataError(f"{f}: not a readable parquet file ({type(e).__name__}: {e})") from None
        if "image" not in schema_names or "label" not in schema_names:
            raise DataError(f"{f}: parquet needs 'image' and 'label' columns, has {sorted(schema_names)}")
        labels = table.column("label").to_pylist()
        descs = table.column("scene_description").to_pylist() if "scene_description" in cols else None
        vids = _vid_ids(table)
        lic_col = "license" if "license" in cols else ("licence" if "licence" in cols else None)
        lics = table.column(lic_col).to_pylist() if lic_col else None
        for i, label in enumerate(labels):
            if label is None:
                dropped["no_label"] += 1
                continue
            label = 1 if int(label) else 0
            if descs is not None and (label == 0) == bool(descs[i] and str(descs[i]).strip()):
                dropped["label_description_mismatch"] += 1  # the validator's cache skips these too
                continue
            vid = vids[i] if vids is not None else None
            group = f"{root.name}/vid:{vid}" if vid not in (None, "") else f"{root.name}/{rel}#{i // block}"
            out.append(Sample(key=f"{root.name}/{rel}#{i}", label=label, target=float(label),
                              source=f"{root.name}/{f.stem}", group=group, parquet=(str(f), i), weight=weight,
                              dataset=root.name, licence=str((lics[i] if lics else None) or "see dataset card")))
    return out, dict(dropped), {}


# --------------------------------------------------------------------------------------------- pseudo labels
def _scan_pseudo(root: Path, weight: float, block: int, min_confidence: float
                 ) -> tuple[list[Sample], dict[str, int], dict[str, str]]:
    try:
        labels, below = read_soft_labels(root, min_confidence=min_confidence)
    except DatasetError as e:
        raise DataError(str(e)) from None
    out = []
    for sl in labels:
        stem = Path(sl.rel).stem
        out.append(Sample(key=f"{root.name}/{sl.rel}", label=sl.label, target=sl.prob,
                          source=f"{root.name}/{source_of(stem)}", group=f"{root.name}/{stem_group(stem, block)}",
                          path=str(sl.path), weight=weight, condition="pseudo", dataset=root.name,
                          licence=str(sl.record.get("license") or "unknown")))
    return out, ({"below_min_confidence": below} if below else {}), {}


# ------------------------------------------------------------------------------------------------- scanning
def scan_sources(specs: list[str], *, weights: dict[str, float] | None = None, min_confidence: float = 0.0,
                 group_block: int = 30) -> tuple[list[Sample], list[SourceInfo]]:
    """Scan every data spec; returns the samples and one :class:`SourceInfo` per spec.

    ``weights`` maps a data folder name or a source name (``gtsdb-dev/gtsdb``) to a mixing weight, multiplied with
    a spec's ``=W``. Raises :class:`DataError` for a missing folder, an unknown layout, no images, an empty class or
    source, or a weight naming nothing.
    """
    if not specs:
        raise DataError("no --data given")
    weights = dict(weights or {})
    samples: list[Sample] = []
    infos: list[SourceInfo] = []
    parents: dict[str, str] = {}
    for spec in specs:
        d, w = parse_spec(spec)
        root = Path(d).expanduser().resolve()
        if not root.is_dir():
            raise DataError(f"--data {d}: no such folder")
        if any(info.name == root.name for info in infos):
            raise DataError(f"--data {d}: two data folders share the name {root.name!r}")
        w *= weights.get(root.name, 1.0)
        if (root / SOFT_LABELS).is_file():
            kind, (found, dropped, par) = "pseudo", _scan_pseudo(root, w, group_block, min_confidence)
        elif any((root / s).is_dir() for s in LABEL_DIRS):
            kind, (found, dropped, par) = "image-folder", _scan_folder(root, w, group_block)
        elif any(root.rglob("*.parquet")):
            kind, (found, dropped, par) = "parquet", _scan_parquet(root, w, group_block)
        else:
            raise DataError(f"--data {d}: expected roadwork/ and no_roadwork/ subfolders, *.parquet files "
                            f"or {SOFT_LABELS}")
        if not found:
            why = f" (dropped: {dropped})" if dropped else ""
            raise DataError(f"--data {d}: no usable images in this {kind} source{why}")
        src_w = {s: weights[s] for s in {x.source for x in found} if s in weights}
        if src_w:
            found = [replace(x, weight=x.weight * src_w[x.source]) if x.source in src_w else x for x in found]
        lab = Counter(x.label for x in found)
        infos.append(SourceInfo(path=str(root), name=root.name, kind=kind, weight=w, n=len(found), roadwork=lab[1],
                                no_roadwork=lab[0], dropped=dropped,
                                licences=dict(Counter(x.licence for x in found).most_common()),
                                conditions=dict(Counter(x.condition for x in found))))
        samples.extend(found)
        parents.update(par)
        if dropped:
            logger.info("{}: dropped {}", root, dropped)
    unknown = set(weights) - {i.name for i in infos} - {s.source for s in samples}
    if unknown:
        raise DataError(f"data weight for {', '.join(sorted(unknown))}: no data folder or source of that name "
                        f"(folders: {', '.join(i.name for i in infos)})")
    samples = _join_parents(samples, parents, group_block)
    classes = Counter(s.label for s in samples)
    for label, name in ((1, "roadwork"), (0, "no_roadwork")):
        if not classes[label]:
            raise DataError(f"--data {' '.join(specs)}: no {name} images at all; training needs both classes")
    return samples, infos


def _join_parents(samples: list[Sample], parents: dict[str, str], block: int) -> list[Sample]:
    """An i2i image takes the group of the real image it was made from (matched by key, path or file name)."""
    if not parents:
        return samples
    by_key = {s.key: s.group for s in samples}
    by_name: dict[str, str] = {}
    for s in samples:
        if s.path is not None:
            by_name.setdefault(Path(s.path).name, s.group)
    out = []
    for s in samples:
        p = parents.get(s.key)
        if p is None:
            out.append(s)
            continue
        pkey = p if p in by_key else f"{s.dataset}/{p}"
        group = by_key.get(pkey) or by_name.get(Path(p).name) or f"parent/{stem_group(Path(p).stem, block)}"
        out.append(replace(s, group=group))
    return out


def scan_data(specs: list[str], *, weights: dict[str, float] | None = None, min_confidence: float = 0.0,
              group_block: int = 30) -> list[Sample]:
    """The samples of every data spec (see :func:`scan_sources`)."""
    return scan_sources(specs, weights=weights, min_confidence=min_confidence, group_block=group_block)[0]


def sampling_weights(samples: list[Sample], *, class_balanced: bool = True) -> list[float]:
    """Per-sample weights for a ``WeightedRandomSampler``, mean 1.

    ``class_balanced``: within each data folder both classes carry the same total weight (folders keep their share
    of samples); times each sample's source weight.
    """
    if not samples:
        return []
    by = Counter((s.dataset, s.label) for s in samples)
    n_ds = Counter(s.dataset for s in samples)
    w = []
    for s in samples:
        base = 1.0
        if class_balanced:
            classes = sum(1 for lab in (0, 1) if by[(s.dataset, lab)])
            base = n_ds[s.dataset] / (classes * by[(s.dataset, s.label)])
        w.append(base * s.weight)
    mean = sum(w) / len(w)
    return [x / mean for x in w]


# ---------------------------------------------------------------------------------------------- decoding
class _RowGroupCache:
    """Image bytes of parquet rows, read one row group at a time; the last few row groups are kept."""

    def __init__(self, size: int = 4):
        self.size = size
        self._lock = threading.Lock()
        self._files: dict[str, Any] = {}
        self._groups: OrderedDict[tuple[str, int], list[Any]] = OrderedDict()

    def get(self, path: str, row: int) -> bytes | None:
        with self._lock:
            pf = self._files.get(path)
            if pf is None:
                pf = self._files[path] = _pq().ParquetFile(path)
                pf._row_starts = []  # type: ignore[attr-defined]
                start = 0
                for g in range(pf.metadata.num_row_groups):
                    pf._row_starts.append(start)  # type: ignore[attr-defined]
                    start += pf.metadata.row_group(g).num_rows
            starts = pf._row_starts  # type: ignore[attr-defined]
            g = max(i for i, s in enumerate(starts) if s <= row)
            rows = self._groups.get((path, g))
            if rows is None:
                rows = pf.read_row_group(g, columns=["image"]).column("image").to_pylist()
                self._groups[(path, g)] = rows
                while len(self._groups) > self.size:
                    self._groups.popitem(last=False)
            else:
                self._groups.move_to_end((path, g))
        value = rows[row - starts[g]]
        if isinstance(value, dict):
            value = value.get("bytes")
        return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else None


_PARQUET = _RowGroupCache()


def load_image_bytes(sample: Sample) -> bytes:
    """The encoded image file of a sample. Raises :class:`ImageUnreadable`."""
    if sample.path is not None:
        try:
            return Path(sample.path).read_bytes()
        except OSError as e:
            raise ImageUnreadable(f"{sample.path}: cannot read ({e})") from None
    if sample.parquet is None:
        raise ImageUnreadable(f"{sample.key}: neither a path nor a parquet row")
    path, row = sample.parquet
    try:
        data = _PARQUET.get(path, row)
    except Exception as e:  # noqa: BLE001
        raise ImageUnreadable(f"{path} row {row}: cannot read ({type(e).__name__}: {e})") from None
    if not data:
        raise ImageUnreadable(f"{path} row {row}: no image bytes")
    return data


def load_image(sample: Sample) -> Image.Image:
    """The sample's image, 8-bit RGB with EXIF orientation applied, decoded by the miner's own safe decoder
    (:func:`natix_miner.imaging.decode_image_bytes`). Raises :class:`ImageUnreadable` for a bad file."""
    from natix_miner.imaging import ImageDecodeError, decode_image_bytes

    data = load_image_bytes(sample)
    where = sample.path or f"{sample.parquet[0]} row {sample.parquet[1]}"  # type: ignore[index]
    try:
        return decode_image_bytes(data).image
    except ImageDecodeError as e:
        raise ImageUnreadable(f"{where}: unreadable image ({e})") from None

