"""``neurons/miner.py`` main: flags → logging → telemetry → :class:`Miner` → run."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    from natix_miner.neuron.config import parse_config

    cfg = parse_config(argv)
    # ultralytics would otherwise try to pip-install missing optional packages at run time (e.g. pi-heif
    # on an unidentified image): a serving miner never installs or downloads anything.
    os.environ.setdefault("YOLO_OFFLINE", "1")
    if cfg.mock:
        # a local dry run never reaches a model hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("YOLO_OFFLINE", "1")
    from loguru import logger

    from natix_miner.telemetry import Telemetry, setup_logging

    level = "TRACE" if cfg.logging_trace else "DEBUG" if cfg.logging_debug else "INFO"
    log_dir = os.path.expanduser(os.path.join(cfg.logging_dir, cfg.neuron_name)) if cfg.logging_record_log else None
    setup_logging(level=level, log_dir=log_dir)
    if cfg.unknown_args:
        logger.warning(f"ignoring unknown arguments: {' '.join(cfg.unknown_args)}")

    import bittensor as bt

    if cfg.logging_trace:
        bt.logging.set_trace(True)
    elif cfg.logging_debug:
        bt.logging.set_debug(True)
    else:
        bt.logging.set_warning()

    telemetry = None
    if not cfg.wandb_off:
        mode = "offline" if (cfg.mock or cfg.wandb_offline) else os.environ.get("WANDB_MODE", "online")
        telemetry = Telemetry(enabled=True, project=cfg.wandb_project, entity=cfg.wandb_entity, mode=mode,
                              run_name=f"{cfg.neuron_name}-{cfg.netuid}", config={"netuid": cfg.netuid,
                              "profile": cfg.profile or "lite-cpu", "mock": cfg.mock})

    from natix_miner.neuron.miner import Miner

    miner = Miner(cfg, telemetry=telemetry)
    try:
        miner.run()
    except SystemExit as e:
        if e.code not in (None, 0):
            logger.error(str(e.code))
            return 1
    except KeyboardInterrupt:
        miner.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
