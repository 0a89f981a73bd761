"""Operator tools behind ``scripts/{soak,doctor,model_card,register,bench_gpu,download_models}.py``.

Each module holds the testable logic; the scripts are thin command-line wrappers:

- :mod:`natix_miner.ops.soak` — N simulated validators hammer one miner for M minutes; latency
  percentiles, unanswered requests and the miner's memory over time (JSON + PNG); its simulated
  validators in :mod:`natix_miner.ops.soak_validators`, the report in :mod:`natix_miner.ops.soak_report`.
- :mod:`natix_miner.ops.download_models` — fetch a profile's models, then check each loads offline.
- :mod:`natix_miner.ops.bench_gpu` — batch-1 latency of each tier's real architectures (random weights).
- :mod:`natix_miner.ops.doctor` — PASS/WARN/FAIL checks of a mining setup (wallet, registration,
  published axon, reachability, clock, GPU placement, cached weights, subnet activity).
- :mod:`natix_miner.ops.model_card` — write and validate ``model_card.json`` (docs/protocol.md §4.9), push
  the folder to Hugging Face.
- :mod:`natix_miner.ops.register` — register the miner with the NATIX application server
  (docs/protocol.md §4.8, ``register.sh`` in Python).

Importing this package is cheap: bittensor, torch, matplotlib and huggingface_hub are imported
inside the functions that need them.
"""
