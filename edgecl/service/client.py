"""The CLI's HTTP client (``edgecl learner add | predict | status | ...``): one request to the
API, the JSON answer back, every failure as one :class:`ServiceError` line."""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgecl.errors import EdgeclError

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT_S = 120.0  # a checkpoint waits for the task in training; an export traces the model


class ServiceError(EdgeclError, RuntimeError):
    """The learner could not be reached or answered with an error."""


class Client:
    def __init__(self, url: str = DEFAULT_URL, token: str | None = None,
                 timeout: float = TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = httpx.request(method, self.url + path, headers=self.headers,
                                     timeout=self.timeout, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach the learner at {self.url}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_error:
            detail = body.get("error") if isinstance(body, dict) else response.text[:200]
            raise ServiceError(f"{response.status_code} from {method} {path}: {detail}")
        if body is None:
            raise ServiceError(f"{method} {path} answered no JSON ({response.status_code})")
        return body

    def add(self, images: Sequence[Path], labels: Sequence[str],
            keys: Sequence[str] | None = None) -> Any:
        data: dict[str, list[str]] = {"label": list(labels)}
        if keys:
            data["key"] = list(keys)
        return self.request("POST", "/v1/samples", files=_parts(images), data=data)

    def predict(self, images: Sequence[Path], top: int | None = None) -> Any:
        params = {"top": top} if top else None
        return self.request("POST", "/v1/predict", files=_parts(images), params=params)

    def status(self) -> Any:
        return self.request("GET", "/v1/status")

    def checkpoint(self) -> Any:
        return self.request("POST", "/v1/checkpoint")

    def export(self) -> Any:
        return self.request("POST", "/v1/export")


def _parts(images: Sequence[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """``image`` file parts (files read here: a missing one is an OSError, one line)."""
    parts = []
    for path in images:
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        parts.append(("image", (path.name, Path(path).read_bytes(), kind)))
    return parts


def pair_labels(images: Sequence[Path], labels: Sequence[str]) -> list[str]:
    """One ``--label`` for every image, or one per image in order."""
    if len(labels) == 1:
        return list(labels) * len(images)
    if len(labels) != len(images):
        raise ServiceError(f"{len(images)} images but {len(labels)} --label values: give one "
                           "label for all or one per image")
    return list(labels)
