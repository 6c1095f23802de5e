"""``edgecl learn``: a learner on a state directory behind the HTTP API, run by uvicorn.

The socket is bound before the learner is built (a port in use fails at once, as one line);
SIGINT and SIGTERM stop the server gracefully, then the learner closes (its final
checkpoint)."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from edgecl.errors import ConfigError

TOKEN_ENV = "EDGECL_TOKEN"


class _Stopped(Exception):
    pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, token: str | None) -> str | None:
    """The token to check: ``--token``, else ``$EDGECL_TOKEN``; required off loopback."""
    token = token if token is not None else os.environ.get(TOKEN_ENV)
    if token is not None and not token.strip():
        raise ConfigError(f"the token is empty; pass --token or set {TOKEN_ENV} to a secret")
    if token is None and not is_loopback(host):
        raise ConfigError(f"binding to {host} (not loopback) needs a token: pass --token or "
                          f"set {TOKEN_ENV}")
    return token


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: a port is 0 to 65535 (0: any free one)")
    try:
        return socket.create_server((host.strip("[]"), port), family=family)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def serve(state: Path, config: Path | None, host: str, port: int, token: str | None,
          announce: Any = None) -> None:
    """Run until SIGINT/SIGTERM. ``announce(url)`` is called once the server listens."""
    import uvicorn

    from edgecl.learner import Learner, load_learner_config
    from edgecl.service.app import create_app

    token = resolve_token(host, token)
    cfg = load_learner_config(config) if config is not None else None  # fails before binding
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sock = bind(host, port)
    try:
        learner = Learner(state, cfg)
    except BaseException:
        sock.close()
        raise
    server = uvicorn.Server(uvicorn.Config(
        create_app(learner, token), log_level="info", timeout_graceful_shutdown=10,
        access_log=True))
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None

    def stopped(signum: int, frame: Any) -> None:
        raise _Stopped  # uvicorn re-raises SIGTERM after its graceful stop: end here

    if main:
        signal.signal(signal.SIGTERM, stopped)
    try:
        if announce is not None:
            announce(url_of(sock))
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        sock.close()
        learner.close()
        print(f"learner on {state} stopped", file=sys.stderr)
