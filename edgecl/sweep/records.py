"""What a sweep keeps per trial, beside the trial's ordinary run directory.

``<sweep>/trials/<key>/`` is an ``edgecl run`` output directory (``config.yaml``,
``<label>/results.json``, ``<label>/report.html``) plus ``trial.json`` (the trial's method, seed
and axis values, its status and, when it failed, its one-line error) and ``events.jsonl`` (one
line per start, completion, failure or reuse of finished results, with its time).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from edgecl.errors import ResultsError, one_line
from edgecl.io import fsync_directory, write_json

TRIALS_DIR = "trials"
RECORD = "trial.json"
EVENTS = "events.jsonl"
Status = Literal["running", "completed", "failed"]


class TrialRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str  # the trial directory's name
    label: str  # the method's run name (its subdirectory)
    method: str  # the method's registry name
    seed: int
    params: dict[str, Any]  # axis name -> value, as the sweep file names the axes
    status: Status
    error: str | None = None


def configuration_key(label: str, params: dict[str, Any]) -> str:
    """One configuration: the method and its axis values (a trial is one seed of it)."""
    if not params:
        return label
    return f"{label} " + " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(params.items()))


def trial_key(label: str, seed: int, params: dict[str, Any]) -> str:
    """The trial's directory name: readable, and the same for the same trial on a resume."""
    if not params:
        return f"{label}-seed{seed}"
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return f"{label}-seed{seed}-{digest}"


def write_record(trial_dir: Path, record: TrialRecord) -> None:
    write_json(trial_dir / RECORD, record.model_dump(mode="json"))


def read_record(trial_dir: Path) -> TrialRecord:
    path = trial_dir / RECORD
    try:
        return TrialRecord.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise ResultsError(f"{path}: no trial record (not a sweep trial)") from None
    except ValidationError as exc:
        raise ResultsError(one_line(f"{path}: not a sweep trial record: {exc}")) from None


def mark_failed(trial_dir: Path, record: TrialRecord, error: object) -> TrialRecord:
    failed = record.model_copy(update={"status": "failed", "error": one_line(error)})
    write_record(trial_dir, failed)
    append_event(trial_dir, "failed", error=failed.error)
    return failed


def append_event(trial_dir: Path, event: str, **fields: Any) -> None:
    """One line of ``events.jsonl``, flushed to disk before returning."""
    line = json.dumps({"event": event, "time": time.time(), "pid": os.getpid(), **fields})
    trial_dir.mkdir(parents=True, exist_ok=True)
    with open(trial_dir / EVENTS, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    fsync_directory(trial_dir)


def read_events(trial_dir: Path) -> list[dict[str, Any]]:
    """The trial's events; a line torn by a kill is dropped."""
    path = trial_dir / EVENTS
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def trial_dirs(sweep_dir: Path) -> list[Path]:
    """Every trial directory of a sweep (those with a record), sorted by name."""
    root = sweep_dir / TRIALS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / RECORD).is_file())
