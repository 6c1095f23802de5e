"""glibc arena cap: applied on glibc, read from the environment with clear errors, and set
by the edgecl command before torch is imported."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from edgecl.malloc import arenas_from_env, limit_arenas

GLIBC = platform.libc_ver()[0] == "glibc"


def test_none_leaves_glibc_alone():
    assert limit_arenas(None) is False


def test_bad_count_is_a_clear_error():
    with pytest.raises(ValueError, match=">= 1"):
        limit_arenas(0)


@pytest.mark.skipif(not GLIBC, reason="needs glibc's mallopt")
def test_cap_is_applied_on_glibc():
    assert limit_arenas(8) is True  # glibc's own per-core default region: harmless here


@pytest.mark.parametrize("env, expected", [
    ({}, 1),
    ({"EDGECL_MALLOC_ARENAS": "4"}, 4),
    ({"EDGECL_MALLOC_ARENAS": "default"}, None),
    ({"MALLOC_ARENA_MAX": "2", "EDGECL_MALLOC_ARENAS": "4"}, None),  # glibc's own wins
])
def test_arena_count_from_the_environment(env, expected):
    assert arenas_from_env(env) == expected


@pytest.mark.parametrize("raw", ["0", "-1", "many", ""])
def test_bad_environment_value_is_a_clear_error(raw):
    with pytest.raises(ValueError, match="EDGECL_MALLOC_ARENAS must be"):
        arenas_from_env({"EDGECL_MALLOC_ARENAS": raw})


def test_cli_exits_2_with_one_line_on_a_bad_value():
    proc = subprocess.run([sys.executable, "-m", "edgecl.cli", "run", "--help"],
                          env={"EDGECL_MALLOC_ARENAS": "x", "PATH": ""},
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: EDGECL_MALLOC_ARENAS must be a positive integer or 'default', got 'x'"]


def test_cli_caps_arenas_before_importing_torch():
    """edgecl.cli must not import torch at module load: the cap holds only for threads that
    have not allocated yet, and torch's import starts one."""
    code = "import sys, edgecl.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
