"""Stream labelled images to a learner over HTTP, retrying through restarts.

``python -m edgecl.service.stream --url URL --samples FILE.npz --acked FILE`` sends the
samples of an ``.npz`` (``images`` uint8 (N, H, W, 3), ``labels`` and ``keys`` as string
arrays) as PNG in requests of ``--per-request`` images, each with its idempotency key. A
request that fails (the server is down, restarting, or was killed mid-request) is sent
again, with the same keys, until it is acknowledged; every acknowledged key is appended to
``--acked`` (with the request's latency) and fsynced before the next request. The acked log
is the ground truth a crash test checks the server's store against.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import httpx
import numpy as np

from edgecl.learner.images import encode_png


def post_samples(client: httpx.Client, url: str, pngs: list[bytes], labels: list[str],
                 keys: list[str]) -> list[int]:
    files = [("image", (f"{k}.png", png, "image/png")) for k, png in zip(keys, pngs, strict=True)]
    data = {"label": labels, "key": keys}
    reply = client.post(f"{url}/v1/samples", files=files, data=data)
    if reply.status_code != 200:
        raise httpx.HTTPStatusError(reply.text, request=reply.request, response=reply)
    return reply.json()["ids"]


def stream(url: str, samples: Path, acked: Path, per_request: int = 4, rate: float = 0.0,
           token: str | None = None, deadline_s: float = 600.0) -> int:
    """Send every sample until acknowledged; returns how many requests had to be retried."""
    data = np.load(samples, allow_pickle=False)
    images, labels, keys = data["images"], [str(x) for x in data["labels"]], [
        str(x) for x in data["keys"]]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    retries, stop_at = 0, time.monotonic() + deadline_s
    with httpx.Client(timeout=30.0, headers=headers) as client, open(acked, "a") as log:
        for start in range(0, len(keys), per_request):
            part = slice(start, start + per_request)
            pngs = [encode_png(im) for im in images[part]]
            while True:
                began = time.perf_counter()
                try:
                    ids = post_samples(client, url, pngs, labels[part], keys[part])
                    break
                except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                    client_error = isinstance(exc, httpx.HTTPStatusError) and (
                        exc.response.status_code < 500)
                    if client_error or time.monotonic() > stop_at:
                        raise  # bad input is not retried
                    retries += 1
                    time.sleep(0.1)
            latency = time.perf_counter() - began
            for key, sample_id in zip(keys[part], ids, strict=True):
                log.write(json.dumps({"key": key, "id": sample_id, "latency_s": latency}) + "\n")
            log.flush()
            os.fsync(log.fileno())
            if rate:
                time.sleep(per_request / rate)
    return retries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--samples", type=Path, required=True)
    parser.add_argument("--acked", type=Path, required=True)
    parser.add_argument("--per-request", type=int, default=4)
    parser.add_argument("--rate", type=float, default=0.0, help="images per second (0: max)")
    parser.add_argument("--token", default=os.environ.get("EDGECL_TOKEN"))
    parser.add_argument("--deadline-s", type=float, default=600.0)
    args = parser.parse_args()
    retries = stream(args.url, args.samples, args.acked, args.per_request, args.rate,
                     args.token, args.deadline_s)
    print(json.dumps({"retries": retries}))


if __name__ == "__main__":
    main()
