#!/usr/bin/env python
"""Fit consensus weights, bias, calibration threshold and tier exit thresholds for a profile.

    .venv/bin/python scripts/calibrate.py --profile configs/lite-cpu.yaml --images DIR \
        --out configs/my-calibrated.yaml --report reports/calibration.json [--holdout 0.3] [--latency-budget-ms 500]

Runs every tier of the profile on every image of DIR (roadwork/ and no_roadwork/) to record each model's
vote and per-image latency (its call's time divided by the call's images, so --latency-budget-ms is compared
with what one request costs, whatever the batch), splits the images (stratified) into a fit and a held-out part, fits on the fit part
(see natix_miner/evaluation/calibration.py), and prints the simulated expected reward, MCC, accuracy and
latency before and after on the held-out part. The fitted profile is written to --out: the source profile's
text with the fitted values changed, its comments kept. Warns when a split has few images of a class.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from natix_miner.ops.json_report import emit_json  # noqa: E402


def collect_samples(profile, images: str, condition: str, seed: int, limit_per_class=None, allow_restricted=False,
                    devices=None):
    from natix_miner.evaluation.calibration import Sample
    from natix_miner.evaluation.evaluate import run_evaluation

    # profiles are frozen: a validated copy that never exits early (records every model), no cache
    forced = profile.replace(tiers=[t.replace(exit_threshold=1.0) for t in profile.tiers], deadline_s=8.5,
                             cache={"enabled": False})
    records: list = []
    run_evaluation(images, forced, condition=condition, seed=seed, limit_per_class=limit_per_class,
                   allow_restricted=allow_restricted, devices=devices, records_out=records)
    return [Sample(label=r.label, votes=r.votes, latencies=r.latencies or {}) for r in records]


def write_profile(profile, out: str, params, tier_names: list[str], header: str) -> None:
    from natix_miner.evaluation.calibration import calibrated_profile_text

    text = calibrated_profile_text(
        Path(profile.source).read_text(encoding="utf-8"), params, dict(zip(tier_names, params.exit_thresholds)),
        [t.name for t in profile.tiers], [[m.name for m in t.models] for t in profile.tiers], profile.name, header)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text, encoding="utf-8")


def main(argv=None) -> int:
    from natix_miner.evaluation.evaluate import CONDITIONS, DEFAULT_CONDITION

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--images", required=True)
    ap.add_argument("--condition", default=DEFAULT_CONDITION, choices=CONDITIONS,
                    help="what a validator does to the images before sending (default: as scripts/evaluate.py)")
    ap.add_argument("--holdout", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-budget-ms", type=float, default=None,
                    help="budget for the mean simulated per-image latency (each model call's time / its images)")
    ap.add_argument("--limit-per-class", type=int, default=None)
    ap.add_argument("--out", required=True, help="where to write the calibrated profile YAML")
    ap.add_argument("--report", default=None)
    ap.add_argument("--allow-restricted", action="store_true")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from natix_miner.evaluation import calibration as cal
    from natix_miner.profile import load_profile

    profile = load_profile(a.profile)
    tiers = [[m.name for m in t.models if m.enabled] for t in profile.tiers if t.enabled]
    tier_names = [t.name for t in profile.tiers if t.enabled]
    models = [m for ms in tiers for m in ms]
    samples = collect_samples(profile, a.images, a.condition, a.seed, a.limit_per_class, a.allow_restricted)
    fit, held = cal.split(samples, a.holdout, a.seed)
    print(f"{len(samples)} images: {len(fit)} to fit, {len(held)} held out")
    for w in cal.sample_warnings(fit, held):
        print(f"WARNING: {w}")

    before = cal.CascadeParams(
        weights={m.name: m.weight for _, m in profile.models()}, bias=profile.consensus.bias,
        threshold=profile.calibration.threshold, exit_thresholds=[t.exit_threshold for t in profile.tiers if t.enabled],
        temperature=profile.calibration.temperature, epsilon=profile.calibration.epsilon)
    weights, bias = cal.fit_weights(fit, models)
    after = cal.CascadeParams(weights=weights, bias=bias, threshold=0.5, exit_thresholds=list(before.exit_thresholds),
                              temperature=1.0, epsilon=before.epsilon)
    pooled_fit, _, _ = cal.simulate_cascade(fit, tiers, cal.CascadeParams(weights, bias, 0.5, [1.0] * len(tiers)))
    after.threshold = cal.mcc_optimal_threshold([s.label for s in fit], pooled_fit)
    after.exit_thresholds = cal.fit_exit_thresholds(fit, tiers, after, a.latency_budget_ms, seed=a.seed)

    res = {"profile": str(profile.source), "images": a.images, "condition": a.condition, "n_fit": len(fit),
           "n_held_out": len(held),
           "before": cal.evaluate_params(held, tiers, before, a.seed),
           "after": cal.evaluate_params(held, tiers, after, a.seed),
           "fitted": {"weights": weights, "bias": bias, "threshold": after.threshold,
                      "exit_thresholds": dict(zip(tier_names, after.exit_thresholds))}}
    res["delta_expected_reward"] = res["after"]["expected_reward"] - res["before"]["expected_reward"]
    header = (f"# Calibrated by scripts/calibrate.py from {profile.source} on {a.images} ({a.condition}),\n"
              f"# fit on {len(fit)} images, held-out {len(held)}: expected reward "
              f"{res['before']['expected_reward']:.4f} -> {res['after']['expected_reward']:.4f}\n")
    write_profile(profile, a.out, after, tier_names, header)
    for k in ("before", "after"):
        r = res[k]
        print(f"{k:>6} (held out): expected reward {r['expected_reward']:.4f}  MCC {r['mcc']:.3f}  "
              f"accuracy {r['accuracy']:.3f}  mean latency {r['mean_latency_ms']:.1f} ms per image")
    print(f"change in simulated expected reward: {res['delta_expected_reward']:+.4f}")
    print(f"calibrated profile: {a.out}")
    if a.report:
        emit_json(res, a.report, echo=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
