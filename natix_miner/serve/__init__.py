"""The cascade as a shared Ray Serve service for many miners (``python -m natix_miner.serve``).

``config`` (the profile's ``serve:`` section, Ray resources from the placement plan), ``deployments``
(``ModelServer`` per model, ``CascadeIngress`` running ``CascadeEngine``), ``app`` (build, deploy, CLI).
The miner's client is :mod:`natix_miner.engine.remote` (``--engine.remote URL``). Ray is imported
only by ``deployments`` and ``app`` (optional extra ``[serve]``).
"""
