"""A faithful local replica of the NATIX StreetVision validator (PROTOCOL §2, §3, §7, §10, §12).

* :mod:`.augment` — the validator's image preparation (conditions ``aug-2026-01``: levels 0–3 at
  224×224; ``letterbox-2026-04``: fit inside 224×224 with black padding, then the levels; ``fullres``)
  and its JPEG/base64 encoding;
* :mod:`.challenges` — label, then source (synthetic / real / api uniformly), then image, over local
  labelled folders; challenges without an image are skipped like on a validator;
* :mod:`.organic` — the dormant organic path: scoring against the rounded mean of simulated peers;
* :mod:`.scoring` — the performance tracker, the reward and the EMA score vector;
* :mod:`.client` — querying a miner through a real ``bt.Dendrite`` and :func:`.client.run_mock_validator`.

Submodules import their heavy dependencies (torch, cv2, sklearn, bittensor) lazily.
"""
