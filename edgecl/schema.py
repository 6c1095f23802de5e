"""The results.json schema: what a run records, typed and versioned.

The runner builds a :class:`RunResults` and writes it with :func:`save_results`; ``report``,
``compare`` and every benchmark read it back with :func:`load_results`, so a field has one
name and one meaning everywhere. ``docs/results.md`` documents every field. A file of another
schema version is refused with a message, never half-read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgecl.errors import MissingResultsError, ResultsError, one_line
from edgecl.io import write_json

SCHEMA_VERSION = 2
RESULTS_FILENAME = "results.json"
PER_SAMPLE_BASIS = "stream_samples"


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- accuracy ----------------------------------------------------------------------------
class AccuracySummary(Record):
    """Percent accuracies; None where the protocol does not define a figure."""

    matrix: list[list[float | None]] | None  # A[t][i]: on task i after task t; None: seen_classes
    final_average: float | None
    average_incremental: float | None
    forgetting: float | None  # Chaudhry et al.: max over the rows before the last
    bwt: float | None
    # l2p-pytorch / Mammoth / SparCL: max over every row, the last included (never negative);
    # None in files written before it was recorded
    forgetting_with_final: float | None = None

    @model_validator(mode="after")
    def matrix_is_lower_triangular(self) -> AccuracySummary:
        rows = self.matrix or []
        bad = [t for t, row in enumerate(rows) if len(row) != t + 1]
        if bad:
            raise ValueError(f"row {bad[0]} of the accuracy matrix needs {bad[0] + 1} entries")
        return self


class CurvePoint(Record):
    task: int
    seen_classes: int
    test_samples: int
    class_il: float | None


class AccuracyResults(Record):
    protocol: Literal["per_task", "seen_classes"] = "per_task"
    class_il: AccuracySummary
    task_il: AccuracySummary | None
    seen_classes_curve: list[CurvePoint] | None = None
    # the class-IL argmax: over the classes seen so far or over every logit (eval.class_il_logits)
    class_il_logits: Literal["seen", "all"] = "seen"


# ---- cost --------------------------------------------------------------------------------
class TrainFlops(Record):
    """Every FLOP spent while training, by part; ``total`` is their sum."""

    forward: int  # forward passes that train (with autograd), incl. replayed samples
    backward: int
    optimizer: int  # update-rule arithmetic per updated element
    selection: int  # prompt-selection / query passes (no grad)
    prefix: int  # frozen-prefix passes (no grad) a training step needs
    other: int  # module calls a method makes while preparing data or inside its update
    total: int

    @model_validator(mode="after")
    def total_is_the_sum(self) -> TrainFlops:
        parts = (self.forward + self.backward + self.optimizer + self.selection + self.prefix
                 + self.other)
        if self.total != parts:
            raise ValueError(f"flops.train.total {self.total} is not the sum of its parts {parts}")
        return self


class PerSample(Record):
    """Training FLOPs per sample of the stream: the same denominator for every method."""

    basis: Literal["stream_samples"] = PER_SAMPLE_BASIS
    samples: int  # training images the stream delivers, each counted once
    train_flops: float


class FlopsResults(Record):
    train: TrainFlops
    eval: int
    per_sample: PerSample
    samples_observed: int  # stream samples the method trained on, repeats over epochs included
    samples_processed: int  # samples through the trained model, replayed ones included
    sparse: dict[str, Any] | None = None  # RigL-style sparse FLOPs (SparCL), beside the dense
    # training FLOPs by the dtype the op computed in (fp32, bf16, fp16), and the precisions
    # that ran (train.precision / eval.precision with auto resolved); absent in older files
    by_dtype: dict[str, int] = {}
    precision: dict[str, str] = {"train": "fp32", "eval": "fp32"}


class MemoryResults(Record):
    """Bytes. Parameter/gradient/optimizer/buffer figures are maxima over training steps."""

    peak_saved_for_backward_bytes: int
    mean_saved_for_backward_bytes: float
    parameter_bytes: int
    trainable_parameter_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int
    buffer_bytes: int
    training_footprint_bytes: int  # the largest single step: saved + state of that step
    training_footprint_mean_bytes: float
    peak_rss_bytes: int
    cuda_max_allocated_bytes: int | None
    # the real peak of the probed steps (cost.step_peak_every): allocator events on a CPU plus
    # what was resident at the step's start, or torch.cuda.max_memory_allocated on a GPU; the
    # accounting footprint (saved + state) of the same steps beside it; None: not probed
    step_peak_bytes: int | None = None
    step_peak_accounting_bytes: int | None = None
    step_peak_steps: int = 0
    step_peak_source: Literal["cpu_profiler", "cuda_allocator"] | None = None


class TimeResults(Record):
    """Seconds of wall time per phase; ``train_total`` is every phase but eval."""

    data: float
    selection: float
    prefix: float
    forward: float
    backward: float
    step: float
    eval: float
    train_total: float
    wall_total: float


class EnergyEstimate(Record):
    train_joules: float
    total_joules: float
    train_compute_seconds: float | None = None
    profile: dict[str, Any]
    precision: str = "fp32"  # whose peak rate the estimate used (DeviceProfile.rate_precision)


class EnergyResults(Record):
    unit: Literal["J"] = "J"
    estimates: dict[str, EnergyEstimate]
    measured: float | None
    note: str


class CostResults(Record):
    flops: FlopsResults
    memory: MemoryResults
    time_s: TimeResults
    energy: EnergyResults


# ---- the run -----------------------------------------------------------------------------
class Environment(Record):
    python: str
    torch: str
    platform: str
    processor: str
    threads: int
    device: str
    gpu: str | None


class ScenarioResults(Record):
    dataset: str
    n_tasks: int
    class_order: list[int]
    classes_per_task: list[int]
    train_samples_per_task: list[int]  # what the method trains on (joint: cumulative)
    test_samples_per_task: list[int]


class TaskRecord(Record):
    task: int
    train_steps: int
    train_samples: int  # stream samples observed in this task
    train_flops: int  # flops.train.total spent in this task
    train_time_s: float
    eval_time_s: float | None = None
    class_il_average: float | None = None  # per_task protocol
    class_il_seen_classes: float | None = None  # seen_classes protocol, where evaluated
    extra: dict[str, float] = Field(default_factory=dict)  # figures callbacks add


class RunResults(Record):
    schema_version: Literal[2] = SCHEMA_VERSION
    edgecl_version: str
    run_name: str
    method: str
    status: Literal["completed"] = "completed"
    config: dict[str, Any]  # the resolved config, with the method's own merged blocks
    environment: Environment
    scenario: ScenarioResults
    accuracy: AccuracyResults
    cost: CostResults
    per_task: list[TaskRecord]
    extra: dict[str, Any] = Field(default_factory=dict)  # method-specific results

    @property
    def label(self) -> str:
        return self.run_name

    @property
    def protocol(self) -> str:
        return self.accuracy.protocol


def results_path(run_dir_or_file: str | os.PathLike[str]) -> Path:
    path = Path(run_dir_or_file)
    return path / RESULTS_FILENAME if path.is_dir() else path


def save_results(run_dir: Path, results: RunResults) -> Path:
    path = run_dir / RESULTS_FILENAME
    write_json(path, results.model_dump(mode="json"))
    return path


def load_results(run_dir_or_file: str | os.PathLike[str]) -> RunResults:
    """The results of a finished run (a run directory or a results.json path)."""
    path = results_path(run_dir_or_file)
    if not path.is_file():
        raise MissingResultsError(f"{path}: no results.json (has the run finished?)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{path}: not readable JSON ({one_line(exc)})") from None
    return parse_results(data, source=path)


def parse_results(data: object, source: object = "results") -> RunResults:
    if not isinstance(data, dict):
        raise ResultsError(f"{source}: a results file holds a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ResultsError(
            f"{source}: schema_version {version!r} is not {SCHEMA_VERSION}; rerun it with this "
            "edgecl, or read it with the edgecl version that wrote it")
    try:
        return RunResults.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ResultsError(f"{source}: {where}: {one_line(first['msg'])}") from None
