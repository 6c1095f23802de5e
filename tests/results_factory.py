"""Hand-made :class:`edgecl.schema.RunResults` for tests of what reads results.json."""

from __future__ import annotations

from typing import Any

from edgecl.schema import RunResults

MIB = 1024**2


def accuracy_summary(matrix: list[list[float]]) -> dict[str, Any]:
    """A per-task summary of a lower-triangular accuracy matrix, computed by hand."""
    rows = [sum(r) / len(r) for r in matrix]
    last = len(matrix) - 1
    drops = [max(matrix[t][i] for t in range(i, last)) - matrix[last][i] for i in range(last)]
    return {
        "matrix": matrix,
        "final_average": rows[-1],
        "average_incremental": sum(rows) / len(rows),
        "forgetting": sum(drops) / len(drops) if drops else None,
        "bwt": sum(matrix[last][i] - matrix[i][i] for i in range(last)) / last if last else None,
    }


def seen_classes_accuracy(curve: list[tuple[int, int, float]]) -> dict[str, Any]:
    """The seen_classes protocol: (task, seen classes, class-IL %) after the listed tasks."""
    accs = [acc for _, _, acc in curve]
    return {
        "protocol": "seen_classes",
        "class_il": {"matrix": None, "final_average": accs[-1],
                     "average_incremental": sum(accs) / len(accs), "forgetting": None,
                     "bwt": None},
        "task_il": None,
        "seen_classes_curve": [
            {"task": t, "seen_classes": seen, "test_samples": 4 * seen, "class_il": acc}
            for t, seen, acc in curve
        ],
    }


def _estimate(train_j: float, total_j: float, name: str) -> dict[str, Any]:
    return {"train_joules": train_j, "total_joules": total_j, "profile": {"name": name}}


def make_results(
    name: str,
    class_il: list[list[float]],
    *,
    train_flops: int,
    selection_flops: int = 0,
    prefix_flops: int = 0,
    other_flops: int = 0,
    footprint_mib: float = 100.0,
    train_s: float = 50.0,
    host_j: float = 500.0,
    task_il: list[list[float]] | None = None,
    accuracy: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> RunResults:
    """A completed run over ``len(class_il)`` tasks of 1000 training images each.

    ``train_flops`` is ``flops.train.total``: selection, prefix and other FLOPs are parts of it.
    ``accuracy`` replaces the per-task accuracy built from the matrices.
    """
    n_tasks = len(class_il)
    samples = 1000 * n_tasks
    rest = train_flops - selection_flops - prefix_flops - other_flops - 1000
    memory = {
        "peak_saved_for_backward_bytes": int(footprint_mib * MIB * 0.6),
        "mean_saved_for_backward_bytes": footprint_mib * MIB * 0.5,
        "parameter_bytes": int(footprint_mib * MIB * 0.1),
        "trainable_parameter_bytes": int(footprint_mib * MIB * 0.1),
        "gradient_bytes": int(footprint_mib * MIB * 0.1),
        "optimizer_state_bytes": int(footprint_mib * MIB * 0.1),
        "buffer_bytes": int(footprint_mib * MIB * 0.1),
        "training_footprint_bytes": int(footprint_mib * MIB),
        "training_footprint_mean_bytes": footprint_mib * MIB * 0.9,
        "peak_rss_bytes": 900 * MIB,
        "cuda_max_allocated_bytes": None,
    }
    data = {
        "edgecl_version": "0.1.0",
        "run_name": name,
        "method": name.split("-")[0],
        "config": {"method": {"name": name}, "seed": 0, "data": {"url": "https://example.org/x"}},
        "environment": {
            "python": "3.11.7", "torch": "2.13.0+cpu", "platform": "Linux-x86_64",
            "processor": "x86_64", "threads": 2, "device": "cpu", "gpu": None,
        },
        "scenario": {
            "dataset": "cifar100",
            "n_tasks": n_tasks,
            "class_order": list(range(2 * n_tasks)),
            "classes_per_task": [2] * n_tasks,
            "train_samples_per_task": [1000] * n_tasks,
            "test_samples_per_task": [200] * n_tasks,
        },
        "accuracy": accuracy or {
            "protocol": "per_task",
            "class_il": accuracy_summary(class_il),
            "task_il": accuracy_summary(task_il) if task_il else None,
        },
        "cost": {
            "flops": {
                "train": {
                    "forward": rest // 3, "backward": rest - rest // 3, "optimizer": 1000,
                    "selection": selection_flops, "prefix": prefix_flops, "other": other_flops,
                    "total": train_flops,
                },
                "eval": 10**9,
                "per_sample": {"samples": samples, "train_flops": train_flops / samples},
                "samples_observed": 2 * samples,
                "samples_processed": 3 * samples,
            },
            "memory": memory,
            "time_s": {
                "data": 1.0, "selection": 0.5, "prefix": 0.25, "forward": train_s / 3,
                "backward": train_s / 2, "step": 0.5, "eval": 3.0, "train_total": train_s,
                "wall_total": train_s + 5.0,
            },
            "energy": {
                "estimates": {
                    "host": _estimate(host_j * 0.8, host_j, "this host (2 threads)"),
                    "jetson_nano": _estimate(host_j * 2, host_j * 2.5, "Jetson Nano"),
                },
                "measured": None,
                "note": "estimates from FLOPs and bytes with device profiles, not measurements",
            },
        },
        "per_task": [
            {"task": t, "train_steps": 10, "train_samples": 1000,
             "train_flops": train_flops // n_tasks, "train_time_s": train_s / n_tasks,
             "eval_time_s": 1.0}
            for t in range(n_tasks)
        ],
        "extra": extra or {},
    }
    return RunResults.model_validate(data)
