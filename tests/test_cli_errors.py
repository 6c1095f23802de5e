"""Every bad value given to ``edgecl run`` ends as one line ``error: ...`` and exit status 2,
with no traceback, before any data is read or any output directory is made.

Most cases run in this process through typer's runner (one torch import for all of them); a
few run the real ``python -m edgecl.cli`` in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgecl.cli import app

REPO = Path(__file__).resolve().parents[1]

# (id, arguments after `edgecl run`, a part of the expected message); {d}: the files below
CASES: list[tuple[str, list[str], str]] = [
    ("unknown-field", ["--set", "train.batch_sise=3"], "train.batch_sise: Extra inputs"),
    ("unknown-section", ["--set", "trian.epochs=3"], "trian: Extra inputs"),
    ("negative-lr", ["--set", "optim.lr=-1"], "optim.lr: Input should be greater than 0"),
    ("unknown-optimizer", ["--set", "optim.name=rmsprop"], "optim.name: Input should be"),
    ("unknown-schedule", ["--set", "optim.lr_schedule=step"], "optim.lr_schedule"),
    ("momentum-one", ["--set", "optim.momentum=1"], "optim.momentum"),
    ("beta-above-one", ["--set", "optim.betas=[1.5, 0.9]"], "optim.betas.0"),
    ("unknown-method", ["--set", "methods.0.name=foo"], "unknown method 'foo'"),
    ("misspelt-method-field", ["--set", "methods.1.buffer_sise=3"],
     "methods.1 (er): buffer_sise: Extra inputs are not permitted"),
    ("method-entry-not-mapping", ["--set", "methods=[er]"], "a method entry is a mapping"),
    ("no-methods", ["--set", "methods=[]"], "methods: List should have at least 1 item"),
    ("method-optim-lr", ["--set", "methods.0.optim={lr: -1}"],
     "methods.0 (finetune): optim.lr: Input should be greater than 0"),
    ("method-train-field", ["-c", "{d}/method_train.yaml"],
     "methods.0 (finetune): train.epochz: Extra inputs are not permitted"),
    ("unknown-dataset", ["--set", "data.dataset=imagenet"], "unknown data set 'imagenet'"),
    ("unknown-backbone", ["--set", "backbone.name=vit_huge"], "unknown backbone.name 'vit_huge'"),
    ("zero-tasks", ["--set", "data.n_tasks=0"], "data.n_tasks: Input should be greater"),
    ("bad-class-order", ["--set", "data.class_order=random"], "data.class_order: must be"),
    ("repeated-class-ids", ["--set", "data.n_tasks=1", "--set", "data.class_order=[4, 4]"],
     "repeats class ids [4]"),
    ("core50-field-on-cifar", ["--set", "data.core50_run=1"], "data.core50_run is not used"),
    ("bad-device", ["--set", "device=gpu0"], "device: must be cpu, cuda, cuda:N or auto"),
    ("zero-threads", ["--set", "threads=0"], "threads: Input should be greater"),
    ("negative-seed", ["--set", "seed=-1"], "seed: Input should be greater"),
    ("zero-img-size", ["--set", "backbone.img_size=0"], "backbone.img_size"),
    ("zero-batch", ["--set", "train.batch_size=0"], "train.batch_size: Input should be greater"),
    ("bad-eval-protocol", ["--set", "eval.protocol=matrix"], "eval.protocol: Input should be"),
    ("unknown-device-profile", ["--set", "cost.device_profiles=[toaster]"],
     "unknown device profiles ['toaster']"),
    ("label-with-slash", ["--set", "methods.0.label=a/b"], "label: must name a directory"),
    ("duplicate-labels", ["-c", "{d}/duplicate.yaml"], "methods need distinct labels"),
    ("set-without-value", ["--set", "train.epochs"], "--set expects key=value"),
    ("set-value-not-yaml", ["--set", "train.epochs=[1"], "is not valid YAML"),
    ("set-value-wrong-type", ["--set", "train.epochs=many"], "train.epochs: Input should be"),
    ("set-through-scalar", ["--set", "seed.value=1"], "seed is 42, not a mapping or list"),
    ("set-bad-index", ["--set", "methods.7.buffer_size=1"], "'7' is not an index below 4"),
    ("config-not-yaml", ["-c", "{d}/bad.yaml"], "not valid YAML"),
    ("config-binary", ["-c", "{d}/binary.yaml"], "not a text (YAML) file"),
    ("config-missing", ["-c", "{d}/missing.yaml"], "missing.yaml not found"),
    ("config-is-directory", ["-c", "{d}"], "cannot read config file"),
    ("config-top-level-list", ["-c", "{d}/list.yaml"], "top level must be a mapping"),
    ("extends-cycle", ["-c", "{d}/cycle_a.yaml"], "extends cycle: "),
    ("extends-missing", ["-c", "{d}/extends_missing.yaml"], "extends 'nowhere.yaml', but"),
    ("resume-without-config", ["--resume", "{d}/not_a_run"], "has no config.yaml"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad-configs")
    trees = {
        "method_train.yaml": {"methods": [{"name": "finetune", "train": {"epochz": 1}}]},
        "duplicate.yaml": {"methods": [{"name": "finetune"}, {"name": "finetune"}]},
        "cycle_a.yaml": {"extends": "cycle_b.yaml"},
        "cycle_b.yaml": {"extends": "cycle_a.yaml"},
        "extends_missing.yaml": {"extends": "nowhere.yaml", "seed": 1},
    }
    for name, tree in trees.items():
        (d / name).write_text(yaml.safe_dump(tree))
    (d / "bad.yaml").write_text("data: [unclosed\n")
    (d / "list.yaml").write_text("- name: finetune\n")
    (d / "binary.yaml").write_bytes(b"\xff\xfe\x00\x81\x93")
    (d / "not_a_run").mkdir()
    return d


def run_args(case: list[str], files: Path, tmp_path: Path) -> list[str]:
    """``edgecl run`` with the case's arguments; were a case valid after all, the run would stop
    at once on the empty data root (and show up as a wrong message), never download."""
    return ["run", "-q", "--out", str(tmp_path / "out"), "--data-root", str(tmp_path / "none"),
            "--set", "data.download=false", *(a.replace("{d}", str(files)) for a in case)]


def assert_one_line_error(code: int, stdout: str, stderr: str, expected: str) -> None:
    assert "Traceback" not in stdout + stderr, stderr
    assert code == 2, (code, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert expected in lines[0], lines[0]
    assert stdout == ""


@pytest.mark.parametrize(("args", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_value_is_one_line_error(args: list[str], expected: str, files: Path,
                                     tmp_path: Path) -> None:
    result = CliRunner().invoke(app, run_args(args, files, tmp_path))
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception))
    assert_one_line_error(result.exit_code, result.stdout, result.stderr, expected)
    assert not (tmp_path / "out").exists()  # failed before the run began


def test_at_least_twenty_distinct_cases() -> None:
    assert len({c[0] for c in CASES}) == len(CASES) >= 20


SUBPROCESS_CASES = ["negative-lr", "misspelt-method-field", "config-missing", "extends-cycle"]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_real_cli_process(case_id: str, files: Path, tmp_path: Path) -> None:
    (args, expected), = [c[1:] for c in CASES if c[0] == case_id]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run(
        [sys.executable, "-m", "edgecl.cli", *run_args(args, files, tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, expected)
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()
