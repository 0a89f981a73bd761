#!/usr/bin/env python
"""Challenge a running miner the way a NATIX validator does, and report how it would be scored.

    .venv/bin/python scripts/mock_validator.py --axon 127.0.0.1:8091 --hotkey 5F...miner \
        --images /path/with/roadwork_and_no_roadwork --challenges 50 --condition both \
        --report reports/mock_validator.json

Each challenge (docs/protocol.md §10): label 50/50 first, then the source uniformly from synthetic / real /
api (1/3 real, 1/6 i2i, 1/6 t2i with two ``--synthetic`` folders, 1/3 api from ``--api-images``; a
source without an image of that label is skipped, like a validator whose server has no task), the
validator's preparation (``aug-2026-01``: augmentation levels 0–3 at 224×224; ``letterbox-2026-04``:
fit inside 224×224 with black padding, then the levels; ``fullres``: full resolution), a
Pillow-default JPEG in base64, sent
``--burst`` times at once (10 = a miner alone in the validator's UID deck) through a real
``bt.Dendrite`` with a 9 s timeout, scored with the validator's tracker, reward and EMA.

The validator wallet: ``--wallet.path/--wallet.name/--wallet.hotkey``, or a throwaway one in a temp
dir. ``--organic-share F`` turns that share of the steps into organic queries scored against the
rounded mean of our answer and ``--peers`` simulated miners of accuracy ``--peer-accuracy``
(docs/protocol.md §10; docs/validator-replica.md). Its hotkey is printed: a miner started with ``--mock`` must accept it
(``--mock.validators <ss58>``); a real miner on a chain will refuse an unregistered caller (403).
Against a remote miner bittensor looks up this machine's public IP; ``--offline`` skips that
(the default for loopback addresses).
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _fmt(v, nd=3):
    if v is None:
        return "n/a"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def print_summary(r: dict) -> None:
    print()
    print("=" * 72)
    cfg = r.get("config", {})
    print(f"mock validator -> {cfg.get('axon')}  (miner {cfg.get('miner_hotkey')})")
    print("-" * 72)
    org = (r.get("organic") or {}).get("n", 0)
    print(f"queries             : {r['n']} ({r['n_challenges'] - org} challenges x burst {cfg.get('burst')}"
          + (f" + {org} organic)" if org else ")"))
    print(f"no answer           : {r['no_answer']}   out of range: {r['out_of_range']}   statuses: {r['status_counts']}")
    print(f"MCC / accuracy / AUC: {_fmt(r['mcc'])} / {_fmt(r['accuracy'])} / {_fmt(r['auc'])}")
    print(f"reward (mean/query) : {_fmt(r['reward'])}   final EMA score: {_fmt(r['ema_score'], 4)}")
    print(f"latency             : p50 {_fmt(r['latency_p50_ms'], 1)} ms   p99 {_fmt(r['latency_p99_ms'], 1)} ms   "
          f"max {_fmt(r['latency_max_ms'], 1)} ms")
    for name, group in (("condition", r["per_condition"]), ("level", r["per_level"]), ("source", r["per_source"])):
        for k, m in group.items():
            print(f"  {name} {k:<12}: n={m['n']:<5} MCC={_fmt(m['mcc'])} acc={_fmt(m['accuracy'])} "
                  f"reward={_fmt(m['reward'])} no_answer={m['no_answer']} p99={_fmt(m['latency_p99_ms'], 1)} ms")
    if r.get("skipped"):
        print(f"skipped challenges  : {r['skipped']} (no image of the drawn label in that source; nothing sent)")
    if r.get("organic"):
        o = r["organic"]
        print(f"organic (consensus) : n={o['n']} agreement={_fmt(o['agreement'])} consensus acc={_fmt(o['consensus_accuracy'])} "
              f"miner acc={_fmt(o['miner_accuracy_truth'])} right but outvoted={o['right_but_outvoted']}")
    print("=" * 72)


def log_to_wandb(report, a) -> None:
    """The replica's metrics (overall and per condition/level) as one wandb run; failures only warn."""
    from natix_miner.telemetry import Telemetry

    tel = Telemetry(enabled=True, project=a.wandb_project, entity=a.wandb_entity, mode=a.wandb_mode,
                    run_name="mock-validator", config=dict(report.get("config", {})))
    keys = ("n", "no_answer", "mcc", "accuracy", "auc", "reward", "ema_score", "latency_p50_ms", "latency_p99_ms")
    tel.log_metrics({k: report.get(k) for k in keys if isinstance(report.get(k), (int, float))}, prefix="replica")
    for group in ("per_condition", "per_level"):
        for name, m in (report.get(group) or {}).items():
            tel.log_metrics({k: v for k, v in m.items() if isinstance(v, (int, float))}, prefix=f"replica/{name}")
    tel.close()


def main(argv=None) -> int:
    from natix_miner.validator.options import add_replica_args

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--axon", required=True, help="HOST:PORT of the miner's axon")
    ap.add_argument("--hotkey", required=True, help="the miner's hotkey (ss58); the axon only answers requests addressed to it")
    ap.add_argument("--images", required=True, help="folder with roadwork/ and no_roadwork/ subfolders")
    add_replica_args(ap, condition_default="aug-2026-01")
    ap.add_argument("--challenges", type=int, default=20, help="challenges per condition")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=9.0, help="dendrite timeout in seconds (validators: 9)")
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds between challenges (validators: 60)")
    ap.add_argument("--wallet.path", dest="wallet_path", default=None,
                    help="validator wallet folder (created without password if missing; default: a temp dir)")
    ap.add_argument("--wallet.name", dest="wallet_name", default="mock-validator")
    ap.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default")
    ap.add_argument("--offline", action="store_true", default=None,
                    help="skip bittensor's public-IP lookup (default: only for loopback miners)")
    ap.add_argument("--report", default=None, help="write the JSON report here")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--wandb", action="store_true", help="log the replica's metrics to wandb")
    ap.add_argument("--wandb.mode", dest="wandb_mode", default="offline", choices=["online", "offline"])
    ap.add_argument("--wandb.project_name", dest="wandb_project", default=os.environ.get("WANDB_PROJECT", "natix-miner"))
    ap.add_argument("--wandb.entity", dest="wandb_entity", default=os.environ.get("WANDB_ENTITY"))
    a = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="INFO", format="<green>{time:HH:mm:ss}</green> | {level: <7} | {message}")
    import bittensor as bt

    bt.logging.set_warning()
    from natix_miner.validator.challenges import ImageSource
    from natix_miner.validator.client import run_mock_validator, throwaway_wallet
    from natix_miner.validator.organic import PeerModel

    # an existing wallet is used as is; missing keys are created without a password (only the
    # hotkey signs requests), so a fixed --wallet.path keeps the same validator hotkey across runs
    wallet = throwaway_wallet(a.wallet_path, name=a.wallet_name, hotkey=a.wallet_hotkey)
    print(f"validator hotkey: {wallet.hotkey.ss58_address}  (pass it to the miner: --mock.validators "
          f"{wallet.hotkey.ss58_address})", flush=True)

    source = ImageSource(a.images, synthetic=a.synthetic or None, seed=a.seed, api=a.api_images)
    if len(source) == 0:
        print(f"no images under {a.images} (expected roadwork/ and no_roadwork/)", file=sys.stderr)
        return 2
    report = run_mock_validator(a.axon, source, n_challenges=a.challenges, conditions=a.condition, wallet=wallet,
                                miner_hotkey=a.hotkey, burst=a.burst, seed=a.seed, progress=not a.no_progress,
                                sleep_s=a.sleep, timeout=a.timeout, offline=a.offline,
                                organic_share=a.organic_share, peers=PeerModel(n_peers=a.peers, accuracy=a.peer_accuracy))
    if a.report:
        p = Path(a.report)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(dict(report), indent=2, default=str))
    if a.wandb:
        log_to_wandb(report, a)
    print_summary(report)
    if a.report:
        print(f"report: {a.report}")
    return 0 if report["n"] > 0 and report["no_answer"] < report["n"] else 1


if __name__ == "__main__":
    sys.exit(main())
