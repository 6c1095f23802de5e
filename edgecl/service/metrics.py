"""``GET /v1/metrics``: the learner's status in the Prometheus text exposition format."""

from __future__ import annotations

import math
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "edgecl_learner_"
MIB = 2**20

# (name, type, help, value of a status dict and its latest held-out accuracy record)
Getter = Any
METRICS: list[tuple[str, str, str, Getter]] = [
    ("samples_stored_total", "counter", "Labelled samples durably stored.",
     lambda s, a: s["samples_stored"]),
    ("classes", "gauge", "Classes known (distinct labels received).",
     lambda s, a: len(s["classes"])),
    ("model_version", "gauge", "Version of the snapshot predictions use.",
     lambda s, a: s["model_version"]),
    ("train_steps_total", "counter", "Training steps taken.", lambda s, a: s["train_steps"]),
    ("tasks_total", "counter", "Tasks trained (the stream cut at task boundaries).",
     lambda s, a: s.get("tasks")),
    ("samples_trained_total", "counter", "Samples fed to training steps (replay included).",
     lambda s, a: s.get("samples_trained")),
    ("queue_samples", "gauge", "Stored samples not trained on yet.", lambda s, a: s["queue"]),
    ("training", "gauge", "1 while a task is in training.",
     lambda s, a: None if s.get("training") is None else int(bool(s["training"]))),
    ("rolled_back_updates_total", "counter", "Updates rolled back after a non-finite loss.",
     lambda s, a: s.get("rolled_back_updates")),
    ("memory_rss_bytes", "gauge", "Resident set size of the learner process.",
     lambda s, a: _mib(s["memory"].get("rss_mib"))),
    ("memory_peak_rss_bytes", "gauge", "Peak resident set size of the learner process.",
     lambda s, a: _mib(s["memory"].get("peak_rss_mib"))),
    ("memory_budget_bytes", "gauge", "Configured memory budget (absent when none is set).",
     lambda s, a: _mib(s["memory"].get("budget_mib"))),
    ("ram_tier_samples", "gauge", "Decoded samples held in the RAM tier.",
     lambda s, a: s["memory"].get("ram_tier_samples")),
    ("ram_tier_capacity", "gauge", "Capacity of the RAM tier (samples).",
     lambda s, a: s["memory"].get("ram_tier_capacity")),
    ("last_checkpoint_timestamp_seconds", "gauge", "Unix time of the last checkpoint.",
     lambda s, a: (s["last_checkpoint"] or {}).get("time")),
    ("last_checkpoint_version", "gauge", "Model version saved in the last checkpoint.",
     lambda s, a: (s["last_checkpoint"] or {}).get("version")),
    ("heldout_accuracy_percent", "gauge", "Latest held-out accuracy on the seen classes.",
     lambda s, a: (a or {}).get("accuracy")),
    ("uptime_seconds", "gauge", "Seconds since the learner started.",
     lambda s, a: s.get("uptime_s")),
]


def _mib(value: float | None) -> float | None:
    return None if value is None else round(value * MIB)


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(status: dict[str, Any], history: dict[str, Any] | None = None) -> str:
    """The exposition text: ``# HELP``/``# TYPE`` and one sample per metric; a metric
    without a value (no checkpoint yet, no budget, no evaluation set) is left out."""
    accuracy = (history or {}).get("accuracy") or []
    latest = accuracy[-1] if accuracy else None
    lines: list[str] = []
    info = f'{PREFIX}info{{method="{_label(str(status.get("method", "")))}"}} 1'
    lines += [f"# HELP {PREFIX}info The learner's configured method.",
              f"# TYPE {PREFIX}info gauge", info]
    for name, kind, help_text, get in METRICS:
        value = get(status, latest)
        if value is None:
            continue
        lines += [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} {kind}",
                  f"{PREFIX}{name} {_number(float(value))}"]
    return "\n".join(lines) + "\n"
