#!/usr/bin/env python
"""Query a miner the way a NATIX validator on bittensor 9.12.x does (run with .venv-wire/bin/python).

This file deliberately imports nothing from natix_miner: it defines ``ImageSynapse`` as the
upstream subnet code does (docs/protocol.md §1) and uses the 9.12.2 dendrite, so it checks the wire from
the outside.

    .venv-wire/bin/python scripts/wire/client.py --axon 127.0.0.1:8091 --miner-hotkey 5F... \
        --wallet.path /tmp/w --wallet.name validator --wallet.hotkey default --n 10 --out result.json

Prints (and writes) JSON: bittensor version, per-response status code, message and prediction.
"""

import argparse
import asyncio
import base64
import io
import json
import sys
import time

import bittensor as bt
import pydantic


class ImageSynapse(bt.Synapse):
    testnet_label: int = -1
    image: str = pydantic.Field(title="Image", description="base64 JPEG", default="", frozen=False)
    prediction: float = pydantic.Field(title="Prediction", default=-1.0, frozen=False)

    def deserialize(self) -> float:
        return self.prediction


def _jpeg_b64(color, size=(224, 224)) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")  # Pillow default quality 75, like upstream
    return base64.b64encode(buf.getvalue()).decode()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--axon", required=True, help="HOST:PORT of the miner")
    ap.add_argument("--miner-hotkey", required=True)
    ap.add_argument("--wallet.path", dest="wallet_path", required=True)
    ap.add_argument("--wallet.name", dest="wallet_name", default="validator")
    ap.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default")
    ap.add_argument("--n", type=int, default=10, help="concurrent copies of the request (a lone miner gets 10)")
    ap.add_argument("--color", default="200,40,40")
    ap.add_argument("--image-file", default=None, help="send this file's bytes instead of a solid-colour JPEG")
    ap.add_argument("--timeout", type=float, default=9.0)
    ap.add_argument("--offline", action="store_true", help="skip bittensor's external-IP lookup")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    if a.offline:
        from bittensor.utils import networking

        networking.get_external_ip = lambda: "127.0.0.1"

    host, port = a.axon.rsplit(":", 1)
    wallet = bt.wallet(path=a.wallet_path, name=a.wallet_name, hotkey=a.wallet_hotkey)
    dendrite = bt.dendrite(wallet=wallet)
    axon = bt.AxonInfo(version=0, ip=host, port=int(port), ip_type=4, hotkey=a.miner_hotkey,
                       coldkey=a.miner_hotkey)
    if a.image_file:
        with open(a.image_file, "rb") as f:
            image = base64.b64encode(f.read()).decode()
    else:
        image = _jpeg_b64(tuple(int(x) for x in a.color.split(",")))
    synapse = ImageSynapse(image=image)

    async def go():
        t0 = time.monotonic()
        res = await dendrite(axons=[axon] * a.n, synapse=synapse, deserialize=False, timeout=a.timeout)
        await dendrite.aclose_session()
        return res, time.monotonic() - t0

    responses, wall = asyncio.run(go())
    out = {
        "bittensor": bt.__version__,
        "wall_s": round(wall, 3),
        "responses": [
            {
                "status_code": r.dendrite.status_code,
                "status_message": r.dendrite.status_message,
                "prediction": r.prediction,
                "process_time": r.dendrite.process_time,
            }
            for r in responses
        ],
    }
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
