"""Keep bittensor off the internet where no lookup is wanted (mock mode, tests, local tools).

``bt.Dendrite()`` and ``bt.Axon()`` (without ``external_ip``) call
``bittensor.utils.networking.get_external_ip()``, which asks public services for this machine's
address. :func:`disable_external_ip_lookup` replaces that function with one returning a fixed
loopback address.
"""

from __future__ import annotations


def disable_external_ip_lookup(ip: str = "127.0.0.1") -> None:
    from bittensor.utils import networking

    def _fixed_ip() -> str:
        return ip

    networking.get_external_ip = _fixed_ip
    # modules that did `from ... import get_external_ip` keep their own reference
    import bittensor.core.axon as _axon
    import bittensor.core.dendrite as _dendrite

    for mod in (_axon, _dendrite):
        net = getattr(mod, "networking", None)
        if net is not None:
            net.get_external_ip = _fixed_ip
