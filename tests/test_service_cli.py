"""``edgecl learn`` and the ``edgecl learner ...`` clients: the real command in a
subprocess on a free port, the clients in this process (typer's runner) against it; every
failure a user can cause is one line ``error: ...`` and exit status 2."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from service_helpers import class_image, tiny_config
from typer.testing import CliRunner

from edgecl.cli import app as cli_app
from edgecl.learner import Learner

REPO = Path(__file__).resolve().parents[1]
TOKEN = "cli-token"


def test_learn_refuses_a_public_address_without_a_token(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGECL_TOKEN", raising=False)
    result = CliRunner().invoke(cli_app, ["learn", "--state", str(tmp_path / "s"),
                                          "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "needs a token" in result.output
    assert not (tmp_path / "s").exists()


def _start_learn(state: Path, config: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("EDGECL_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgecl.cli", "learn", "--state", str(state), "-c", str(config),
         "--port", "0", *extra], stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
    assert match, line + proc.stderr.read()
    return proc, match.group(1)


def test_learn_serves_the_cli_clients_and_stops_cleanly(tmp_path: Path) -> None:
    config = tmp_path / "learner.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    for c, name in ((0, "red"), (1, "green")):
        (tmp_path / f"{name}.png").write_bytes(class_image(c, 3))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    proc, url = _start_learn(tmp_path / "state", config, "--token", TOKEN)
    try:
        runner = CliRunner()
        base = ["--url", url, "--token", TOKEN]
        add = runner.invoke(cli_app, ["learner", "add", str(tmp_path / "red.png"),
                                      str(tmp_path / "green.png"), "--label", "red",
                                      "--label", "green", *base])
        assert add.exit_code == 0, add.output
        assert json.loads(add.output)["accepted"] == 2
        status = runner.invoke(cli_app, ["learner", "status", *base])
        assert json.loads(status.output)["samples_stored"] == 2
        predict = runner.invoke(cli_app, ["learner", "predict", str(tmp_path / "red.png"),
                                          *base])
        assert predict.exit_code == 0 and "predictions" in json.loads(predict.output)
        for args, expected in (
                (["add", str(tmp_path / "bad.png"), "--label", "x", *base], "400 from POST"),
                (["status", "--url", url], "401"),
                (["status", "--url", "http://127.0.0.1:9", "--token", TOKEN], "cannot reach"),
                (["add", str(tmp_path / "missing.png"), "--label", "x", *base], "missing.png")):
            result = runner.invoke(cli_app, ["learner", *args])
            assert result.exit_code == 2, result.output
            assert result.output.startswith("error: ") and result.output.count("\n") == 1
            assert expected in result.output
        in_use = runner.invoke(cli_app, ["learn", "--state", str(tmp_path / "other"),
                                         "--port", url.rsplit(":", 1)[1]])
        assert in_use.exit_code == 2 and "cannot listen" in in_use.output
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert (tmp_path / "state" / "samples.db").is_file()
    assert Learner(tmp_path / "state", None, start=False).store.count() == 2
