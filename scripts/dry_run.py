#!/usr/bin/env python
"""The embedded-default main job behind `make dry-run`.

Starts `neurons/miner.py --mock` (local mock chain, embedded CPU profile, throwaway wallets, loopback
only), runs the validator replica against it through a real dendrite with labelled images, prints a
short report and writes it as JSON. No wallet, chain, GPU or download is needed.

    .venv/bin/python scripts/dry_run.py --challenges 60 --report reports/dry_run.json
    .venv/bin/python scripts/dry_run.py --condition letterbox-2026-04 --api-images DIR --organic-share 0.1

The replica follows docs/protocol.md §10: label first, then synthetic / real / api uniformly; the api third comes
from --api-images and is skipped without it (as validators skip when NATIX's server has no task). The
report breaks results down per condition and per source (`per_condition`, `per_source`).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_IMAGES = ROOT / "natix_miner" / "assets" / "samples"


def main(argv=None) -> int:
    from natix_miner.validator.options import add_replica_args

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--challenges", type=int, default=60, help="challenges per condition")
    ap.add_argument("--images", default=str(DEFAULT_IMAGES),
                    help="folder with roadwork/ and no_roadwork/ (default: the shipped GTSDB sample)")
    ap.add_argument("--profile", default=None, help="engine profile (default: configs/lite-cpu.yaml)")
    add_replica_args(ap, condition_default="both")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", default=str(ROOT / "reports" / "dry_run.json"))
    ap.add_argument("--wandb", action="store_true", help="let the miner log to wandb (offline mode)")
    ap.add_argument("--ready-timeout", type=float, default=300.0)
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    ap.add_argument("--engine-remote", default=None, metavar="URL",
                    help="run the miner with --engine.remote URL (a cascade service: python -m natix_miner.serve)")
    a = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="INFO", format="<green>{time:HH:mm:ss}</green> | {level: <7} | {message}")

    import bittensor as bt

    bt.logging.set_warning()
    from natix_miner.neuron.launcher import MinerProcess
    from natix_miner.neuron.offline import disable_external_ip_lookup
    from natix_miner.validator.challenges import ImageSource
    from natix_miner.validator.client import run_mock_validator
    from natix_miner.validator.organic import PeerModel

    disable_external_ip_lookup("127.0.0.1")
    report_path = Path(a.report)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="natix-dry-run-"))
    miner_w = bt.Wallet(path=str(tmp), name="miner", hotkey="default")
    miner_w.create_if_non_existent(coldkey_use_password=False, hotkey_use_password=False, suppress=True)
    val_w = bt.Wallet(path=str(tmp), name="validator", hotkey="default")
    val_w.create_if_non_existent(coldkey_use_password=False, hotkey_use_password=False, suppress=True)

    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()

    args = ["--mock", "--mock.validators", val_w.hotkey.ss58_address, "--wallet.path", str(tmp),
            "--wallet.name", "miner", "--wallet.hotkey", "default"]
    if a.profile:
        args += ["--profile", a.profile]
    args += ["--wandb.offline"] if a.wandb else ["--wandb.off"]  # the miner uses wandb only when asked
    if a.engine_remote:
        args += ["--engine.remote", a.engine_remote]
    log_path = report_path.with_name(report_path.stem + "_miner.log")
    logger.info(f"starting the miner (--mock) on 127.0.0.1:{port}; its log: {log_path}")
    t0 = time.monotonic()
    mp = MinerProcess(args, port, log_path)
    try:
        mp.wait_ready(timeout=a.ready_timeout)
        logger.info(f"miner ready in {time.monotonic() - t0:.1f} s (models loaded and warmed up)")
        source = ImageSource(a.images, synthetic=a.synthetic or None, api=a.api_images, seed=a.seed)
        report = run_mock_validator(
            host="127.0.0.1", port=port, miner_hotkey=miner_w.hotkey.ss58_address, wallet=val_w,
            source=source, n_challenges=a.challenges, conditions=a.condition, burst=a.burst, seed=a.seed,
            progress=a.progress, organic_share=a.organic_share, peers=PeerModel(n_peers=a.peers, accuracy=a.peer_accuracy),
        )
    finally:
        shutdown_s = mp.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # the throwaway wallets
    report = dict(report)
    report["dry_run"] = {"miner_exit_code": mp.proc.returncode, "miner_pid": mp.proc.pid,
                         "shutdown_s": round(shutdown_s, 2), "workdir": str(tmp), "workdir_removed": not tmp.exists(),
                         "images": str(a.images), "api_images": a.api_images,
                         "profile": a.profile or "configs/lite-cpu.yaml", "miner_log": str(log_path),
                         "engine_remote": a.engine_remote}
    report_path.write_text(json.dumps(report, indent=2, default=str))
    print_summary(report)
    print(f"report: {report_path}")
    ok = mp.proc.returncode == 0 and report.get("n", 0) > 0
    return 0 if ok else 1


def _fmt(v, nd=3):
    return "n/a" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def print_summary(r: dict) -> None:
    print()
    print("=" * 72)
    print("natix-miner dry run (mock chain, local validator replica, loopback)")
    print("-" * 72)
    org = (r.get("organic") or {}).get("n", 0)
    steps = f"{r.get('n_challenges', 0) - org} challenges x burst {r.get('config', {}).get('burst', '?')}"
    if org:
        steps += f" + {org} organic"
    print(f"queries             : {steps} = {r.get('n')}   no answer (-1/timeouts/errors): {r.get('no_answer')}")
    print(f"MCC                 : {_fmt(r.get('mcc'))}")
    print(f"accuracy            : {_fmt(r.get('accuracy'))}")
    print(f"AUC                 : {_fmt(r.get('auc'))}")
    print(f"reward (mean/query) : {_fmt(r.get('reward'))}   final EMA score: {_fmt(r.get('ema_score'), 4)}")
    print(f"latency             : p50 {_fmt(r.get('latency_p50_ms'), 1)} ms   p99 {_fmt(r.get('latency_p99_ms'), 1)} ms")
    for cond, m in (r.get("per_condition") or {}).items():
        print(f"  {cond:<18}: n={m.get('n')} MCC={_fmt(m.get('mcc'))} acc={_fmt(m.get('accuracy'))} "
              f"reward={_fmt(m.get('reward'))}")
    for src, m in (r.get("per_source") or {}).items():
        print(f"  source {src:<11}: n={m.get('n')} MCC={_fmt(m.get('mcc'))} acc={_fmt(m.get('accuracy'))}")
    if r.get("skipped"):
        print(f"skipped challenges  : {r['skipped']} (source without an image of the drawn label; nothing sent)")
    if r.get("organic"):
        o = r["organic"]
        print(f"organic (consensus) : n={o['n']} agreement={_fmt(o['agreement'])} "
              f"consensus acc={_fmt(o['consensus_accuracy'])} right but outvoted={o['right_but_outvoted']}")
    d = r.get("dry_run", {})
    print(f"miner shutdown      : exit code {d.get('miner_exit_code')} after SIGTERM in {d.get('shutdown_s')} s")
    print("=" * 72)


if __name__ == "__main__":
    sys.exit(main())
