"""A real learner behind a real uvicorn server on a free port, for tests/test_service.py and
tests/test_status_page.py: a tiny random ViT at 32 px, so a learner starts in well under a
second and trains a task in about one."""

from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from conftest import save_tiny_vit
from PIL import Image


def tiny_config(folder: Path, **extra: Any) -> dict[str, Any]:
    """A fast learner config; its random ViT weights are saved in ``folder``."""
    weights = folder / "tiny_vit.pt"
    if not weights.exists():
        save_tiny_vit(weights)
    return {
        "backbone": {"name": "vit_tiny_patch16_224", "weights": str(weights), "img_size": 32},
        "method": {"name": "latent_replay", "split_layer": 2, "rm_sz": 50},
        "max_classes": 20, "batch_size": 8, "checkpoint_every_s": 3600,
        "boundary": {"policy": "new_classes", "min_samples": 2, "max_wait_s": 0.2},
        "memory": {"ram_samples": 32, "refresh_every_s": 3600},
        **extra,
    }


def image_bytes(seed: int, size: tuple[int, int] = (40, 30), fmt: str = "PNG") -> bytes:
    """A random RGB image of ``size`` (w, h) encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt)
    return out.getvalue()


def class_image(label: int, seed: int) -> bytes:
    """An image of a class that a tiny model can tell apart: a flat colour plus noise."""
    rng = np.random.default_rng([label, seed])
    colours = np.array([[220, 30, 30], [30, 200, 40], [40, 60, 230], [230, 220, 30]])
    array = np.clip(colours[label % 4] + rng.normal(0, 12, (32, 32, 3)), 0, 255)
    out = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


class Served:
    """``create_app(learner, token)`` served by uvicorn in a thread, on 127.0.0.1:<free>."""

    def __init__(self, learner: Any, token: str | None = None, **app_kwargs: Any) -> None:
        import uvicorn

        from edgecl.service.app import create_app

        self.learner = learner
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(learner, token, **app_kwargs), log_level="warning",
                                lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


def post_samples(url: str, images: list[bytes], labels: list[str], token: str | None = None,
                 keys: list[str] | None = None) -> httpx.Response:
    files = [("image", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    data: dict[str, list[str]] = {"label": labels}
    if keys is not None:
        data["key"] = keys
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(url + "/v1/samples", files=files, data=data, headers=headers, timeout=30)


def wait_trained(url: str, headers: dict[str, str] | None = None, timeout: float = 40.0
                 ) -> dict[str, Any]:
    """The status once every stored sample is trained on (queue 0, not training)."""
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(url + "/v1/status", headers=headers or {}, timeout=30).json()
        if status["queue"] == 0 and not status["training"] and status["model_version"] > 0:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"training did not finish in {timeout} s: {status}")
        time.sleep(0.1)
