"""The cost part of a run report: FLOPs, memory, time, energy, per task, and the scenario."""

from __future__ import annotations

from edgecl.report import formatting as fmt
from edgecl.report.document import Block, Note, Table
from edgecl.report.values import ENERGY_NOTE, TRAIN_PARTS_SUM, labelled_fields, train_parts
from edgecl.schema import EnergyEstimate, RunResults


def flops_blocks(result: RunResults) -> list[Block]:
    flops = result.cost.flops
    train = flops.train
    phases = [
        *((f"Train: {label}", part) for label, part in train_parts(train)),
        ("Train total", train.total),
        ("Evaluation", flops.eval),
    ]
    whole = train.total + flops.eval
    rows = [[name, fmt.human(fmt.scaled(v, 1e9)), fmt.share(v, whole)] for name, v in phases]
    per_sample = fmt.scaled(flops.per_sample.train_flops, 1e6)
    rows += [
        ["Train per stream sample (MFLOPs)", fmt.human(per_sample), ""],
        ["Stream samples (each counted once)", fmt.count(flops.per_sample.samples), ""],
        ["Samples observed (incl. epoch repeats)", fmt.count(flops.samples_observed), ""],
        ["Samples processed (incl. replayed)", fmt.count(flops.samples_processed), ""],
    ]
    note = Note(
        f"Train total is the sum of its parts: {TRAIN_PARTS_SUM}; selection "
        "and frozen-prefix passes run without gradients. "
        f"Per stream sample = train total / the {fmt.count(flops.per_sample.samples)} training "
        "images of the stream, each counted once (epoch repeats and replayed samples are not "
        "counted again): the same denominator for every method on this stream."
    )
    return [Table(["Phase", "GFLOPs", "Share of all"], rows, "FLOPs by phase"), note]


MEMORY_LABELS = {
    "peak_saved_for_backward_bytes": "Activations saved for backward (peak)",
    "mean_saved_for_backward_bytes": "Activations saved for backward (mean)",
    "parameter_bytes": "Parameters",
    "trainable_parameter_bytes": "Trainable parameters",
    "gradient_bytes": "Gradients",
    "optimizer_state_bytes": "Optimizer state",
    "buffer_bytes": "Buffers (incl. replay memory)",
    "training_footprint_bytes": "Training footprint (largest step)",
    "training_footprint_mean_bytes": "Training footprint (mean step)",
    "peak_rss_bytes": "Process peak RSS",
    "cuda_max_allocated_bytes": "CUDA max allocated",
    "step_peak_bytes": "Real step peak, allocator (largest probed step)",
    "step_peak_accounting_bytes": "Training footprint of the probed steps (accounting)",
}
MEMORY_NOT_BYTES = ("step_peak_steps", "step_peak_source")  # told in the caption
TIME_LABELS = {
    "data": "Data loading",
    "selection": "Sample selection",
    "prefix": "Frozen prefix",
    "forward": "Forward",
    "backward": "Backward",
    "step": "Optimizer step",
    "eval": "Evaluation",
    "train_total": "Training total",
    "wall_total": "Wall-clock total",
}


def memory_table(result: RunResults) -> Table:
    memory = result.cost.memory
    components = labelled_fields(memory, MEMORY_LABELS, skip=MEMORY_NOT_BYTES)
    rows = [[label, fmt.human(fmt.scaled(value, fmt.MIB))] for label, value in components]
    caption = "Memory"
    if memory.step_peak_steps:
        caption += (f" (real step peak: {memory.step_peak_steps} probed steps, "
                    f"{memory.step_peak_source})")
    return Table(["Component", "MiB"], rows, caption)


def time_table(result: RunResults) -> Table:
    times = result.cost.time_s
    rows = [
        [label, fmt.human(value), fmt.share(value, times.wall_total)]
        for label, value in labelled_fields(times, TIME_LABELS)
    ]
    return Table(["Phase", "Seconds", "Share of wall"], rows, "Time per phase")


def energy_blocks(result: RunResults) -> list[Block]:
    energy = result.cost.energy
    rows = [
        [_profile_label(name, estimate), fmt.human(estimate.train_joules),
         fmt.human(estimate.total_joules)]
        for name, estimate in energy.estimates.items()
    ]
    unit = energy.unit
    measured = (
        "none (no energy counter available for this run)." if energy.measured is None
        else f"{fmt.human(energy.measured)} {unit}."
    )
    return [
        Table(
            ["Device profile", f"Train ({unit}, estimated)", f"Total ({unit}, estimated)"],
            rows,
            "Energy estimates (not measurements)",
        ),
        Note(_energy_note(energy.note), highlight=True),
        Note(f"Measured energy: {measured}"),
    ]


def _energy_note(estimator_note: str) -> str:
    if not estimator_note or estimator_note.lower() in ENERGY_NOTE.lower():
        return ENERGY_NOTE
    return f"{ENERGY_NOTE} Estimator: {estimator_note}."


def _profile_label(name: str, estimate: EnergyEstimate) -> str:
    profile_name = estimate.profile.get("name")
    return f"{name}: {profile_name}" if profile_name and profile_name != name else name


def per_task_table(result: RunResults) -> Table | None:
    if not result.per_task:
        return None
    rows = [
        [
            str(entry.task),
            fmt.count(entry.train_steps),
            fmt.count(entry.train_samples),
            fmt.human(entry.train_time_s),
            fmt.human(fmt.scaled(entry.train_flops, 1e9)),
            fmt.human(entry.eval_time_s),
        ]
        for entry in result.per_task
    ]
    headers = ["Task", "Steps", "Samples", "Train time (s)", "Train GFLOPs", "Eval time (s)"]
    return Table(headers, rows, "Per task")


def scenario_blocks(result: RunResults) -> list[Block]:
    scenario = result.scenario
    columns = [
        scenario.classes_per_task,
        scenario.train_samples_per_task,
        scenario.test_samples_per_task,
    ]
    n_tasks = max(map(len, columns))
    rows = [
        [str(t), *(fmt.count(values[t]) if t < len(values) else fmt.MISSING
                   for values in columns)]
        for t in range(n_tasks)
    ]
    blocks: list[Block] = [Table(["Task", "Classes", "Train samples", "Test samples"], rows)]
    if scenario.class_order:
        blocks.append(Note(f"Class order: {', '.join(map(str, scenario.class_order))}"))
    return blocks
