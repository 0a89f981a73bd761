"""``neurons/miner.py`` main: .env → flags → logging → profile → wallet → chain → :class:`Miner` → run.

Each check stops with one line (no traceback) and a distinct exit code (``natix_miner.neuron.config``):
``CONFIG_EXIT_CODE`` for configuration errors (ecosystem.config.js ``stop_exit_codes``: pm2 does not restart
them), ``CHAIN_EXIT_CODE`` when the chain cannot be reached, 1 when the engine fails to start.
"""

from __future__ import annotations

import os
import sys

FAILED_EXIT_CODE = 1


def _fail(message: str, code: int) -> int:
    """One line on stderr (before logging is configured, or as a plain last word) and the exit code."""
    print(f"natix-miner: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    from natix_miner.neuron.config import (
        CONFIG_EXIT_CODE,
        ConfigError,
        default_env_file,
        extra_args,
        load_env_file,
        parse_config,
    )

    env_file = default_env_file()
    try:
        env_loaded = load_env_file(env_file)  # never overrides the environment; flags win over both
        # MINER_EXTRA_ARGS (environment or .env) first: flags on the command line come last and win
        cfg = parse_config(extra_args() + (sys.argv[1:] if argv is None else list(argv)))
    except ConfigError as e:
        return _fail(f"configuration error: {e}", CONFIG_EXIT_CODE)
    # ultralytics would otherwise try to pip-install missing optional packages at run time (e.g. pi-heif
    # on an unidentified image): a serving miner never installs or downloads anything.
    os.environ.setdefault("YOLO_OFFLINE", "1")
    if cfg.mock:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local dry run never reaches a model hub
    from loguru import logger

    from natix_miner.neuron.startup import StartupError, check_profile, connect_chain, describe, make_wallet, mock_hint
    from natix_miner.telemetry import Telemetry, setup_logging

    level = "TRACE" if cfg.logging_trace else "DEBUG" if cfg.logging_debug else "INFO"
    log_dir = os.path.expanduser(os.path.join(cfg.logging_dir, cfg.neuron_name)) if cfg.logging_record_log else None
    setup_logging(level=level, log_dir=log_dir)
    if env_loaded:
        logger.info(f"read {len(env_loaded)} setting(s) from {env_file}: {', '.join(sorted(env_loaded))}")
    if cfg.unknown_args:
        logger.info(f"ignoring launcher flags: {' '.join(cfg.unknown_args)} (see TOLERATED_FLAGS in "
                    "natix_miner/neuron/config.py)")

    from natix_miner.neuron.miner import Miner

    miner = Miner(cfg)
    try:
        profile = check_profile(cfg)
        import bittensor as bt

        if cfg.logging_trace:
            bt.logging.set_trace(True)
        elif cfg.logging_debug:
            bt.logging.set_debug(True)
        elif cfg.logging_info:
            bt.logging.set_info(True)
        else:
            bt.logging.set_warning()
        make_wallet(miner)
        logger.info(describe(cfg, profile, miner.wallet.hotkey.ss58_address))
        hint = mock_hint(cfg)
        if hint:
            logger.warning(hint)
        connect_chain(miner)
    except StartupError as e:
        logger.error(str(e))
        return e.code

    if cfg.wandb_enabled:  # after the start-up line: a wandb failure is never the first thing an operator reads
        mode = "offline" if (cfg.mock or cfg.wandb_offline) else os.environ.get("WANDB_MODE", "online")
        miner.telemetry = Telemetry(enabled=True, project=cfg.wandb_project, entity=cfg.wandb_entity, mode=mode,
                                    run_name=f"{cfg.neuron_name}-{cfg.netuid}",
                                    config={"netuid": cfg.netuid, "profile": profile.name, "mock": cfg.mock})
    else:
        logger.debug("wandb off (set WANDB_API_KEY or pass --wandb.on to send telemetry)")

    try:
        miner.run()
    except SystemExit as e:
        if e.code not in (None, 0):
            logger.error(str(e.code).replace("\n", " "))
            return CONFIG_EXIT_CODE
    except KeyboardInterrupt:
        miner.stop()
    except Exception as e:  # noqa: BLE001 - one line for the operator; the traceback at DEBUG
        logger.opt(exception=e).debug("start-up traceback")
        first = str(e).splitlines()[0] if str(e) else ""
        what = "engine failed to start" if not miner.ready.is_set() else "miner stopped on an error"
        logger.error(f"{what}: {type(e).__name__}: {first}")
        if type(e).__name__ == "ProfileError":
            return CONFIG_EXIT_CODE
        return FAILED_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
