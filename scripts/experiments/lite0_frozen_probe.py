#!/usr/bin/env python
"""Sanity reference for the Lite0 fine-tune: logistic regression on the frozen Lite0's global-average features of
the full frames squashed to S×S (the fine-tune's own model input), on the same outer folds as
``lite0_finetune_cv.py --folds K`` (``fold_assignment`` with the repeat seed of ``--seed``). Prints the AUC of each
outer fold and of the pooled raw scores. No threshold: it answers "how well can these inputs be ranked at all".

    HF_HUB_OFFLINE=1 nice -n 5 .venv/bin/python scripts/experiments/lite0_frozen_probe.py \\
        --data /work/shared/data/gtsdb-dev --image-size 448 --folds 3

Uses the view cache of ``lite0_finetune_cv.py`` (``$TMPDIR/lite0-ft-views-S-SEED.npz``) when present.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def main(argv=None) -> dict:
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from natix_miner.training.data import load_image, scan_data
    from natix_miner.training.models import build_model
    from natix_miner.training.splits import fold_assignment, repeat_seed
    from natix_miner.training.transforms import model_input

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--C", type=float, default=0.1)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    samples = scan_data(args.data)
    cache = Path(tempfile.gettempdir()) / f"lite0-ft-views-{args.image_size}-{args.seed}.npz"
    full: dict[str, np.ndarray] = {}
    if cache.is_file():
        with np.load(cache) as z:
            keys = [str(k) for k in z["keys"]]
            want = [i for i, k in enumerate(keys) if k.endswith("|full")]
            x = z["x"][want]
            full = {keys[i].split("|", 1)[0]: x[j] for j, i in enumerate(want)}
    for s in samples:
        if s.key not in full:
            full[s.key] = np.asarray(model_input(load_image(s), args.image_size, "squash"), dtype=np.uint8)
    model = build_model("lite0", image_size=args.image_size).eval()
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    feats = np.zeros((len(samples), model.net.num_features), np.float32)
    with torch.inference_mode():
        for b in range(0, len(samples), 32):
            t = torch.from_numpy(np.stack([full[s.key] for s in samples[b:b + 32]])).permute(0, 3, 1, 2)
            t = (t.float() / 255.0 - mean) / std
            feats[b:b + 32] = model.net.forward_head(model.net.forward_features(t), pre_logits=True).numpy()
    y = np.array([s.label for s in samples])
    fold = fold_assignment(samples, args.folds, repeat_seed(args.seed, 0))
    p, per = np.zeros(len(y)), []
    for f in sorted(set(fold.tolist()) - {-1}):
        tr, te = fold != f, fold == f
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=args.C, max_iter=2000, class_weight="balanced"))
        p[te] = clf.fit(feats[tr], y[tr]).predict_proba(feats[te])[:, 1]
        per.append(round(float(roc_auc_score(y[te], p[te])), 3))
    used = fold != -1
    out = {"image_size": args.image_size, "folds": args.folds, "per_fold_auc": per,
           "pooled_raw_auc": round(float(roc_auc_score(y[used], p[used])), 3),
           "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
