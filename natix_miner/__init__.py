"""natix-miner: a miner for the NATIX StreetVision subnet (Bittensor SN72 / testnet 323).

Importing this package is cheap on purpose: heavy libraries (torch, transformers, ultralytics,
bittensor, wandb, vllm, tensorrt) are imported inside the functions that need them.
"""

__version__ = "0.1.0"
