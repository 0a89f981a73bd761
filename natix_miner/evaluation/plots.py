"""PNG plots people read at a glance: reliability, ROC, confusion matrix, tier exits, latency (p50, p95 and the
deadline drawn), scores per class with the threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from natix_miner.evaluation.dataset import LABEL_DIRS

# class names as the labelled folders spell them, indexed by label (0, 1)
CLASS_NAMES = tuple(name for name, _ in sorted(LABEL_DIRS.items(), key=lambda kv: kv[1]))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def reliability_diagram(labels: Sequence[int], probs: Sequence[float], path: Path, bins: int = 10) -> None:
    plt = _plt()
    y, p = np.asarray(labels, float), np.asarray(probs, float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    xs, ys, ns = [], [], []
    for b in range(bins):
        m = idx == b
        if m.any():
            xs.append(p[m].mean())
            ys.append(y[m].mean())
            ns.append(int(m.sum()))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.plot(xs, ys, "o-", label="model")
    for x, yy, n in zip(xs, ys, ns):
        ax.annotate(str(n), (x, yy), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlabel="predicted P(roadwork)", ylabel="observed fraction roadwork", title="Reliability", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def roc_curve_plot(labels: Sequence[int], probs: Sequence[float], path: Path, auc: float | None) -> None:
    plt = _plt()
    y, p = np.asarray(labels, int), np.asarray(probs, float)
    order = np.argsort(-p)
    y = y[order]
    P, N = max(1, int(y.sum())), max(1, int((1 - y).sum()))
    tpr = np.concatenate([[0], np.cumsum(y) / P])
    fpr = np.concatenate([[0], np.cumsum(1 - y) / N])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"AUC = {auc:.3f}" if auc is not None else "AUC n/a")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion_plot(m: dict, path: Path) -> None:
    plt = _plt()
    mat = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(mat, cmap="Blues")
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=14)
    ax.set_xticks([0, 1], [f"predicted {c}" for c in CLASS_NAMES])
    ax.set_yticks([0, 1], [f"true {c}" for c in CLASS_NAMES])
    ax.set_title(f"Confusion (MCC {m['mcc']:.3f}, acc {m['accuracy']:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def bar_plot(counts: dict, path: Path, title: str, ylabel: str = "fraction of requests") -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    keys = list(counts)
    ax.bar(range(len(keys)), [counts[k] for k in keys])
    ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right")
    ax.set(title=title, ylabel=ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def latency_histogram(latencies_ms: Sequence[float], path: Path, title: str = "Latency per image",
                      deadline_ms: float | None = None, basis: str | None = None) -> dict:
    """Histogram with p50, p95 and the deadline drawn; returns the drawn markers (ms)."""
    plt = _plt()
    v = np.asarray([x for x in latencies_ms if x is not None and np.isfinite(x)], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(v, bins=40, color="#4a7ab0")
    marks = {}
    if len(v):
        marks["p50"], marks["p95"] = float(np.percentile(v, 50)), float(np.percentile(v, 95))
        ax.axvline(marks["p50"], color="green", ls="--", label=f"p50 {marks['p50']:.0f} ms")
        ax.axvline(marks["p95"], color="orange", ls="--", label=f"p95 {marks['p95']:.0f} ms")
    if deadline_ms:
        marks["deadline"] = float(deadline_ms)
        ax.axvline(deadline_ms, color="red", lw=2, label=f"deadline {deadline_ms:.0f} ms")
    ax.set(title=title, xlabel="ms" + (f" ({basis})" if basis else ""), ylabel="images")
    if marks:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return marks


def score_histogram(labels: Sequence[int], probs: Sequence[float], path: Path, threshold: float = 0.5,
                    note: str | None = None, bins: int = 40) -> None:
    """P(roadwork) per true class (folder names), with the decision threshold."""
    plt = _plt()
    y, p = np.asarray(labels, int), np.asarray(probs, float)
    fig, ax = plt.subplots(figsize=(6, 4))
    edges = np.linspace(0, 1, bins + 1)
    for cls, name, color in ((0, CLASS_NAMES[0], "#4a7ab0"), (1, CLASS_NAMES[1], "#d9822b")):
        ax.hist(p[y == cls], bins=edges, alpha=0.6, color=color, label=f"{name} (n={int(np.sum(y == cls))})")
    ax.axvline(threshold, color="red", lw=2, label=f"threshold {threshold:g}" + (f" ({note})" if note else ""))
    ax.set(title="Scores per class", xlabel="answered P(roadwork)", ylabel="images", xlim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
