"""A faithful local replica of the NATIX StreetVision validator (docs/protocol.md §2, §3, §7, §10).

* :mod:`.augment` — the validator's image preparation (condition ``aug-2026-01``: levels 0–3 at
  224×224; condition ``fullres``) and its JPEG/base64 encoding;
* :mod:`.challenges` — label/source/image sampling over local labelled folders;
* :mod:`.scoring` — the performance tracker, the reward and the EMA score vector;
* :mod:`.client` — querying a miner through a real ``bt.Dendrite`` and :func:`.client.run_mock_validator`.

Submodules import their heavy dependencies (torch, cv2, sklearn, bittensor) lazily.
"""
