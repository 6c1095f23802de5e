"""The learner's HTTP service (API v1) against a real uvicorn server on a free port, with
real HTTP requests: samples in, predictions, status, metrics, checkpoint, export, every kind
of bad input (4xx with a one-line JSON error, nothing stored, the learner still serving),
the token, and the ``edgecl learn`` / ``edgecl learner ...`` commands."""

from __future__ import annotations

import hmac
import importlib.util
import io
import math
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from service_helpers import (
    Served,
    class_image,
    image_bytes,
    post_samples,
    tiny_config,
    wait_trained,
)

from edgecl.learner import Learner

TOKEN = "s3cret-token"
LIMIT_MIB = 1.0  # the test server's body limit (the default is 16 MiB)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Iterator[Served]:
    """A learner that has trained on two classes, a and b."""
    folder = tmp_path_factory.mktemp("service")
    learner = Learner(folder / "state", tiny_config(folder))
    try:
        with Served(learner, max_body_mib=LIMIT_MIB) as srv:
            images = [class_image(c, s) for c in (0, 1) for s in range(6)]
            answer = post_samples(srv.url, images, ["a"] * 6 + ["b"] * 6)
            assert answer.status_code == 200, answer.text
            wait_trained(srv.url)
            yield srv
    finally:
        learner.close()


def stored(url: str, headers: dict[str, str] | None = None) -> int:
    return httpx.get(url + "/v1/status", headers=headers or {}).json()["samples_stored"]


def one_line_error(response: httpx.Response) -> str:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str) and message and "\n" not in message
    return message


def test_samples_are_stored_then_trained_and_predicted(served: Served) -> None:
    url = served.url
    status = httpx.get(url + "/v1/status").json()
    for field in ("samples_stored", "classes", "model_version", "train_steps", "queue",
                  "memory", "last_checkpoint"):
        assert field in status
    assert status["samples_stored"] == 12 and status["classes"] == ["a", "b"]
    assert set(status["memory"]) >= {"rss_mib", "budget_mib"} and status["train_steps"] > 0
    # a new name is a new class; images of any size are resized by the learner
    answer = post_samples(url, [class_image(2, 0), image_bytes(1, (300, 90), "JPEG")],
                          ["c", "a"])
    assert answer.status_code == 200
    body = answer.json()
    assert body["accepted"] == 2 and len(body["ids"]) == 2
    assert stored(url) == 14 and "c" in httpx.get(url + "/v1/status").json()["classes"]
    files = [("image", ("x.png", class_image(c, 99), "image/png")) for c in (0, 1)]
    answer = httpx.post(url + "/v1/predict", files=files, params={"top": 2})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert isinstance(body["model_version"], int) and body["model_version"] > 0
    assert len(body["predictions"]) == 2
    for pred in body["predictions"]:
        assert pred["label"] in ("a", "b", "c") and 0 <= pred["score"] <= 1
        assert len(pred["top"]) == 2 and pred["top"][0] == [pred["label"], pred["score"]]
    # the server's account of the request: every part, in order, each within the total
    timing = dict(part.split(";dur=") for part in answer.headers["server-timing"].split(", "))
    assert list(timing) == ["read", "decode", "wait", "load", "model", "total"]
    ms = {name: float(dur) for name, dur in timing.items()}
    assert ms["model"] > 0 and sum(v for k, v in ms.items() if k != "total") <= ms["total"] + 0.5
    history = httpx.get(url + "/v1/history").json()
    assert history["samples"][-1]["samples"] == 14 and "accuracy" in history


def test_a_key_makes_a_retry_idempotent(served: Served) -> None:
    url, before = served.url, stored(served.url)
    images, labels, keys = [class_image(0, 50), class_image(1, 50)], ["a", "b"], ["k1", "k2"]
    first = post_samples(url, images, labels, keys=keys).json()
    again = post_samples(url, images, labels, keys=keys).json()
    assert again["ids"] == first["ids"] and stored(url) == before + 2


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "edgeclB") -> bytes:
    """A hand-made multipart body: (field, filename or None for a text field, bytes)."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"'
                                                     if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _npy_with_nan() -> bytes:
    out = io.BytesIO()
    np.save(out, np.array([[np.nan, 1.0], [2.0, np.inf]], dtype=np.float32))
    return out.getvalue()


def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, format="GIF")
    return out.getvalue()


PNG = image_bytes(7)
# a file part that has begun: a chunked body that never ends before the limit
OPEN_PART = (b'--edgeclB\r\nContent-Disposition: form-data; name="image"; filename="x.png"'
             b"\r\n\r\n")
MULTIPART = {"content-type": "multipart/form-data; boundary=edgeclB"}
# (id, method, path, httpx keyword arguments, expected status, a part of the message)
BAD: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    ("corrupt-image", "POST", "/v1/samples",
     {"files": [("image", ("x.png", b"\x89PNG\r\n\x1a\n garbage", "image/png"))],
      "data": {"label": "a"}}, 400, "not a readable PNG or JPEG"),
    ("truncated-png", "POST", "/v1/samples",
     {"files": [("image", ("x.png", PNG[: len(PNG) // 2], "image/png"))],
      "data": {"label": "a"}}, 400, "image 0"),
    ("gif", "POST", "/v1/samples",
     {"files": [("image", ("x.gif", _gif(), "image/gif"))], "data": {"label": "a"}}, 400,
     "format GIF is not supported"),
    ("empty-body", "POST", "/v1/samples", {}, 400, "empty request body"),
    ("empty-multipart", "POST", "/v1/samples",
     {"content": b"", "headers": MULTIPART}, 400, "empty request body"),
    ("empty-image-part", "POST", "/v1/samples",
     {"files": [("image", ("x.png", b"", "image/png"))], "data": {"label": "a"}}, 400,
     "image 0: is empty"),
    ("no-image", "POST", "/v1/samples",
     {"content": _multipart([("label", None, b"a")]), "headers": MULTIPART}, 400, "no image"),
    ("image-as-text-field", "POST", "/v1/samples",
     {"content": _multipart([("image", None, b"abc"), ("label", None, b"a")]),
      "headers": MULTIPART}, 400, "image 0: is a text field"),
    ("empty-label", "POST", "/v1/samples",
     {"files": [("image", ("x.png", PNG, "image/png"))], "data": {"label": ""}}, 400,
     "label 0: is empty"),
    ("blank-label", "POST", "/v1/samples",
     {"files": [("image", ("x.png", PNG, "image/png"))], "data": {"label": "   "}}, 400,
     "label 0: is empty"),
    ("long-label", "POST", "/v1/samples",
     {"files": [("image", ("x.png", PNG, "image/png"))], "data": {"label": "x" * 257}}, 400,
     "257 characters"),
    ("label-is-a-file", "POST", "/v1/samples",
     {"content": _multipart([("image", "x.png", PNG), ("label", "l.txt", b"a")]),
      "headers": MULTIPART}, 400, "label 0: must be text"),
    ("label-not-utf8", "POST", "/v1/samples",
     {"content": _multipart([("image", "x.png", PNG), ("label", None, b"\xff\x80\x81")]),
      "headers": MULTIPART}, 400, "label 0: is not UTF-8 text"),
    ("control-chars-label", "POST", "/v1/samples",
     {"files": [("image", ("x.png", PNG, "image/png"))], "data": {"label": "a\x01b"}}, 400,
     "control characters"),
    ("fewer-labels", "POST", "/v1/samples",
     {"files": [("image", ("x.png", PNG, "image/png"))] * 2, "data": {"label": "a"}}, 400,
     "2 images but 1 labels"),
    ("more-labels", "POST", "/v1/samples",
     {"files": [("image", ("x.png", PNG, "image/png"))], "data": {"label": ["a", "b"]}}, 400,
     "1 images but 2 labels"),
    ("key-count", "POST", "/v1/samples",
     {"files": [("image", ("x.png", PNG, "image/png"))] * 2,
      "data": {"label": ["a", "b"], "key": "k"}}, 400, "2 images but 1 keys"),
    ("unknown-field", "POST", "/v1/samples",
     {"files": [("image", ("x.png", PNG, "image/png"))], "data": {"labels": "a"}}, 400,
     "unknown form field 'labels'"),
    ("json-nan-samples", "POST", "/v1/samples",
     {"content": b'{"image": [[NaN, 1.0]], "label": "a"}',
      "headers": {"content-type": "application/json"}}, 415, "JSON bodies are not accepted"),
    ("npy-nan-samples", "POST", "/v1/samples",
     {"files": [("image", ("x.npy", _npy_with_nan(), "application/octet-stream"))],
      "data": {"label": "a"}}, 400, "NumPy array"),
    ("json-nan-predict", "POST", "/v1/predict",
     {"content": b"[[NaN, NaN]]", "headers": {"content-type": "application/json"}}, 415,
     "JSON bodies are not accepted"),
    ("npy-nan-predict", "POST", "/v1/predict",
     {"files": [("image", ("x.npy", _npy_with_nan(), "application/octet-stream"))]}, 400,
     "NumPy array"),
    ("text-body", "POST", "/v1/samples",
     {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415,
     "Content-Type text/plain is not supported"),
    ("predict-corrupt", "POST", "/v1/predict",
     {"files": [("image", ("x.jpg", b"\xff\xd8\xff\xe0 not a jpeg", "image/jpeg"))]}, 400,
     "image 0"),
    ("predict-no-image", "POST", "/v1/predict", {}, 400, "empty request body"),
    ("predict-label-field", "POST", "/v1/predict",
     {"files": [("image", ("x.png", PNG, "image/png"))], "data": {"label": "a"}}, 400,
     "unknown form field 'label'"),
    ("predict-bad-top", "POST", "/v1/predict",
     {"files": [("image", ("x.png", PNG, "image/png"))], "params": {"top": 0}}, 400, "top"),
    ("predict-top-not-int", "POST", "/v1/predict",
     {"files": [("image", ("x.png", PNG, "image/png"))], "params": {"top": "many"}}, 400,
     "top"),
    ("over-limit-declared", "POST", "/v1/samples",
     {"files": [("image", ("x.png", b"\0" * int(1.5 * 2**20), "image/png"))],
      "data": {"label": "a"}}, 413, "over the limit of 1 MiB"),
    ("over-limit-streamed", "POST", "/v1/samples",
     {"content": [OPEN_PART] + [b"\0" * 2**16] * 40,
      "headers": MULTIPART}, 413, "over the limit"),
    ("unknown-endpoint", "GET", "/v2/status", {}, 404, "unknown endpoint GET /v2/status"),
    ("wrong-method", "GET", "/v1/samples", {}, 405, "GET is not allowed on /v1/samples"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "code", "expected"),
                         [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_input_is_a_4xx_json_error(served: Served, method: str, path: str,
                                       kwargs: dict[str, Any], code: int, expected: str) -> None:
    before = stored(served.url)
    answer = httpx.request(method, served.url + path, timeout=30, **kwargs)
    assert answer.status_code == code, answer.text
    assert expected in one_line_error(answer)
    # the learner keeps serving and nothing stored is lost
    assert stored(served.url) == before
    files = [("image", ("x.png", PNG, "image/png"))]
    assert httpx.post(served.url + "/v1/predict", files=files).status_code == 200


METRIC = re.compile(r"^(edgecl_learner_[a-z_]+)(\{[a-z_]+=\"[^\"]*\"\})? (\S+)$")


def test_metrics_are_prometheus_text(served: Served) -> None:
    answer = httpx.get(served.url + "/v1/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    helps, types, values = set(), {}, {}
    for line in answer.text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split()[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("gauge", "counter") and name in helps
            types[name] = kind
        else:
            match = METRIC.match(line)
            assert match, line
            name = match.group(1)
            assert name in types, f"{name} has no # TYPE line before it"
            values[name] = float(match.group(3))
    assert all(name.endswith("_total") for name, kind in types.items() if kind == "counter")
    status = httpx.get(served.url + "/v1/status").json()
    assert values["edgecl_learner_samples_stored_total"] == status["samples_stored"]
    assert values["edgecl_learner_classes"] == len(status["classes"])
    assert values["edgecl_learner_memory_rss_bytes"] > 2**20
    assert types["edgecl_learner_train_steps_total"] == "counter"
    assert all(not math.isnan(v) for v in values.values())


def test_checkpoint_on_request(served: Served) -> None:
    answer = httpx.post(served.url + "/v1/checkpoint", timeout=60)
    assert answer.status_code == 200, answer.text
    saved = answer.json()
    assert saved["version"] >= 1 and abs(saved["time"] - time.time()) < 60
    assert httpx.get(served.url + "/v1/status").json()["last_checkpoint"]["version"] \
        == saved["version"]
    torch.load(saved["path"], weights_only=True)  # nothing in the state is a pickle


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="no onnxruntime")
def test_export_writes_the_snapshot_as_onnx(served: Served) -> None:
    answer = httpx.post(served.url + "/v1/export", timeout=120)
    assert answer.status_code == 200, answer.text
    info = answer.json()
    path = Path(info["path"])
    assert path == served.learner.state_dir / "exports" / f"model-v{info['model_version']}.onnx"
    assert info["class_names"] == served.learner.store.classes()[: len(info["class_names"])]
    assert info["preprocessing"]["img_size"] == 32 and info["preprocessing"]["mean"]
    import onnxruntime as ort

    from edgecl.export import model_input

    images = [class_image(c, 7) for c in (0, 1)]
    arrays = np.stack([served.learner.decode(b) for b in images])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": model_input(arrays, 32).numpy()})[0]
    files = [("image", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]
    predicted = httpx.post(served.url + "/v1/predict", files=files).json()
    assert str(predicted["model_version"]) == str(info["model_version"])  # the learner is idle
    labels = [info["class_names"][i] for i in logits.argmax(axis=1)]
    assert labels == [p["label"] for p in predicted["predictions"]]


# ---- the token ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("guarded")
    learner = Learner(folder / "state", tiny_config(folder), start=False)
    try:
        with Served(learner, token=TOKEN) as srv:
            yield srv
    finally:
        learner.close()


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/status"), ("GET", "/v1/history"), ("GET", "/v1/metrics"),
    ("POST", "/v1/samples"), ("POST", "/v1/predict"), ("POST", "/v1/checkpoint"),
    ("POST", "/v1/export"), ("GET", "/nowhere")])
def test_every_endpoint_but_the_page_needs_the_token(guarded: Served, method: str,
                                                     path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        answer = httpx.request(method, guarded.url + path, headers=headers)
        assert answer.status_code == 401 and "token" in one_line_error(answer)
        assert answer.headers["www-authenticate"].startswith("Bearer")


def test_the_token_opens_the_api_and_the_page_shows_no_data(guarded: Served,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    calls: list[bytes] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append(a)
        return real(a, b)

    monkeypatch.setattr("edgecl.service.limits.hmac.compare_digest", spy)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    answer = post_samples(guarded.url, [class_image(0, 1)], ["secret-class"], token=TOKEN)
    assert answer.status_code == 200 and calls  # compared in constant time
    assert httpx.get(guarded.url + "/v1/status", headers=auth).json()["samples_stored"] == 1
    page = httpx.get(guarded.url + "/")
    assert page.status_code == 200 and "secret-class" not in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    # nothing trained yet: nothing to export (when export is installed)
    answer = httpx.post(guarded.url + "/v1/export", headers=auth)
    assert answer.status_code in (409, 501) and one_line_error(answer)


def test_the_default_limit_refuses_a_declared_length_unread(guarded: Served) -> None:
    """16 MiB (service.max_body_mib) by default: a larger Content-Length is answered 413
    at once, though not one byte of the body is sent."""
    host, port = guarded.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"POST /v1/samples HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}"
                     f"\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     f"Content-Length: {16 * 2**20 + 1}\r\n\r\n".encode())
        raw = b""
        while not raw.endswith(b"}"):  # the JSON error ends the reply
            chunk = conn.recv(65536)
            if not chunk:
                break
            raw += chunk
    reply = raw.decode()
    assert reply.startswith("HTTP/1.1 413") and "over the limit of 16 MiB" in reply


@pytest.mark.slow
def test_real_defaults(tmp_path: Path, vit_tiny_path: Path, one_thread: None) -> None:
    """The default learner (pretrained ViT-Ti at 224 px, latent replay) behind the API."""
    learner = Learner(tmp_path / "state", {"data_root": str(vit_tiny_path.parents[1])})
    try:
        with Served(learner) as srv:
            images = [class_image(c, s) for c in (0, 1) for s in range(3)]
            assert post_samples(srv.url, images, ["red"] * 3 + ["green"] * 3).status_code == 200
            wait_trained(srv.url, timeout=60)
            files = [("image", ("x.png", class_image(1, 9), "image/png"))]
            answer = httpx.post(srv.url + "/v1/predict", files=files, timeout=60).json()
            assert answer["predictions"][0]["label"] in ("red", "green")
            if importlib.util.find_spec("edgecl.export") is not None:
                exported = httpx.post(srv.url + "/v1/export", timeout=120)
                assert exported.status_code == 200, exported.text
                assert exported.json()["preprocessing"]["img_size"] == 224
    finally:
        learner.close()
