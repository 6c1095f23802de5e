"""Sweep files, trial configs, statistics and the aggregate's parts, without Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgecl.cli import app
from edgecl.config import RunConfig
from edgecl.errors import ConfigError
from edgecl.sweep.aggregate import best_per_method, pareto_front
from edgecl.sweep.records import configuration_key, trial_key
from edgecl.sweep.space import load_sweep, sweep_from_tree
from edgecl.sweep.stats import summary, t_quantile
from edgecl.sweep.trial import trial_params, trial_tree, validated

REPO = Path(__file__).resolve().parents[1]
BASE = {
    "name": "s", "seed": 5,
    "methods": [{"name": "finetune"}, {"name": "er", "buffer_size": 10}],
}


def make(sweep: dict, **tree) -> object:
    return sweep_from_tree({**BASE, **tree, "sweep": sweep})


def test_cells_cross_the_axes_that_apply_to_each_method():
    sweep = make({"seeds": [1, 2], "grid": {"optim.lr": [0.1, 0.01],
                                            "methods.er.buffer_size": [20, 40]}})
    cells = sweep.cells()
    assert cells == [
        {"method": "finetune", "grid": {"optim.lr": 0.1}},
        {"method": "finetune", "grid": {"optim.lr": 0.01}},
        {"method": "er", "grid": {"optim.lr": 0.1, "methods.er.buffer_size": 20}},
        {"method": "er", "grid": {"optim.lr": 0.1, "methods.er.buffer_size": 40}},
        {"method": "er", "grid": {"optim.lr": 0.01, "methods.er.buffer_size": 20}},
        {"method": "er", "grid": {"optim.lr": 0.01, "methods.er.buffer_size": 40}},
    ]
    assert sweep.seeds == [1, 2] and make({}).seeds == [5]
    assert sweep.spec.direction == "max"
    assert make({"metric": "train_flops"}).spec.direction == "min"


def test_trial_tree_is_one_method_with_its_values():
    sweep = make({"grid": {"methods.er.buffer_size": [20]},
                  "sample": {"axes": {"optim.lr": {"loguniform": [1e-4, 1e-2]}}}})
    config = {"cell": {"method": "er", "grid": {"methods.er.buffer_size": 20}}, "seed": 3,
              "sample": {"optim.lr": 0.001}}
    label, params = trial_params(sweep, config)
    assert (label, params) == ("er", {"methods.er.buffer_size": 20, "optim.lr": 0.001})
    cfg = validated(trial_tree(sweep, label, params, 3, threads=2))
    assert isinstance(cfg, RunConfig)
    assert [m.name for m in cfg.methods] == ["er"] and cfg.methods[0].params.buffer_size == 20
    assert (cfg.seed, cfg.threads, cfg.optim.lr) == (3, 2, 0.001)
    # a method-scoped sampled axis is not applied to (nor recorded for) another method
    other = make({"sample": {"axes": {"methods.er.buffer_size": {"choice": [1, 2]}}}})
    assert trial_params(other, {"cell": {"method": "finetune", "grid": {}}, "seed": 0,
                                "sample": {"methods.er.buffer_size": 2}}) == ("finetune", {})


def test_a_bad_value_fails_only_its_trial_config():
    sweep = make({"grid": {"optim.lr": [-1.0]}})
    tree = trial_tree(sweep, "finetune", {"optim.lr": -1.0}, 0, None)
    with pytest.raises(ConfigError, match=r"^invalid trial config: optim.lr: "):
        validated(tree)


@pytest.mark.parametrize(("sweep", "message"), [
    ({"metric": "accuracy"}, "unknown sweep metric 'accuracy'; known: class_il.final_average"),
    ({"grid": {"seed": [1, 2]}}, "sweep axis 'seed': use sweep.seeds"),
    ({"grid": {"methods": [[]]}}, "the config's methods: list is the axis"),
    ({"grid": {"methods.ewc.lambda": [1]}}, "no method labelled 'ewc'"),
    ({"grid": {"optim.lr": []}}, "optim.lr: a grid axis needs at least one value"),
    ({"seeds": [1, 1]}, "seeds repeat"),
    ({"sample": {"axes": {"optim.lr": {"loguniform": [0, 1]}}}}, "loguniform needs low > 0"),
    ({"sample": {"axes": {"optim.lr": {"uniform": [2, 1]}}}}, "uniform needs low < high"),
    ({"sample": {"axes": {"optim.lr": {"normal": [0, 1]}}}}, "Extra inputs are not permitted"),
    ({"grid": {"optim.lr": [1]}, "sample": {"axes": {"optim.lr": {"choice": [1]}}}},
     "both grid and sampled"),
    ({"sample": {"search": "optuna", "axes": {"optim.lr": {"uniform": [0.1, 1]}}}},
     "remove the grid axes ['methods']"),
    ({"samples": 3}, "invalid sweep: samples: Extra inputs are not permitted"),
])
def test_bad_sweeps_are_one_line_errors(sweep, message):
    with pytest.raises(ConfigError) as caught:
        make(sweep)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_run_config_part_is_validated_and_a_sweep_block_required():
    with pytest.raises(ConfigError, match="invalid config: methods.1 \\(er\\): buffer_sise"):
        sweep_from_tree({"methods": [{"name": "finetune"}, {"name": "er", "buffer_sise": 3}],
                         "sweep": {}})
    with pytest.raises(ConfigError, match="needs a sweep: mapping"):
        sweep_from_tree(dict(BASE))


def test_example_sweep_file_loads():
    sweep = load_sweep(REPO / "configs" / "sweep_example.yaml")
    assert len(sweep.cells()) >= 2 and len(sweep.seeds) >= 2
    assert sweep.spec.sample.axes


def test_trial_resources():
    from edgecl.sweep.driver import trial_resources

    assert trial_resources(make({})) == {"cpu": 1}
    assert trial_resources(make({"cpus_per_trial": 2, "gpus_per_trial": 0.5})) == {
        "cpu": 2, "gpu": 0.5}


def test_trial_keys_are_stable_and_distinct():
    assert trial_key("er", 1, {}) == "er-seed1"
    one = trial_key("er", 1, {"optim.lr": 0.1, "methods.er.buffer_size": 20})
    assert one == trial_key("er", 1, {"methods.er.buffer_size": 20, "optim.lr": 0.1})
    assert one != trial_key("er", 1, {"optim.lr": 0.01, "methods.er.buffer_size": 20})
    assert configuration_key("er", {"optim.lr": 0.1}) == "er optim.lr=0.1"


def test_t_quantiles_match_the_published_table():
    # Student-t 0.975 quantiles (any statistics table): df 1, 2, 4, 10
    for df, table in ((1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228)):
        assert t_quantile(0.975, df) == pytest.approx(table, abs=5e-4)


def test_summary_by_hand():
    s = summary([1.0, 2.0, 6.0])  # mean 3, sample variance (4 + 1 + 9) / 2 = 7
    assert s["mean"] == pytest.approx(3.0) and s["std"] == pytest.approx(7 ** 0.5)
    half = 4.303 * 7 ** 0.5 / 3 ** 0.5
    assert s["ci95"] == pytest.approx([3.0 - half, 3.0 + half], abs=1e-3)
    assert summary([4.0]) == {"n": 1, "mean": 4.0, "std": None, "ci95": None, "values": [4.0]}


def _row(key, cost, acc, status="completed"):
    return {"key": key, "status": status,
            "metrics": {"train_flops_per_sample": cost, "class_il.final_average": acc,
                        "class_il.forgetting": acc}}


def test_pareto_front_and_best():
    rows = [_row("a", 1.0, 10.0), _row("b", 2.0, 30.0), _row("c", 3.0, 20.0),
            _row("d", 2.0, 30.0), _row("e", 0.5, 5.0), _row("f", 0.1, 99.0, "failed")]
    assert pareto_front(rows, "train_flops_per_sample", "class_il.final_average") == [
        "a", "b", "d", "e"]
    # forgetting is minimized: low cost and low forgetting win
    assert pareto_front(rows, "train_flops_per_sample", "class_il.forgetting") == ["e"]
    configs = [{"configuration": k, "label": lab, "params": {}, "metrics": {
        "m": {"mean": mean, "n": 2}}} for k, lab, mean in (
        ("x1", "x", 1.0), ("x2", "x", 3.0), ("y1", "y", None), ("y2", "y", 2.0))]
    assert {k: v["configuration"] for k, v in best_per_method(configs, "m", "max").items()} == {
        "x": "x2", "y": "y2"}
    assert best_per_method(configs, "m", "min")["x"]["configuration"] == "x1"


def test_cli_sweep_arguments(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["sweep"])
    assert result.exit_code == 2 and "one of -c SWEEP.yaml, --resume DIR or --report DIR" in (
        result.output)
    result = runner.invoke(app, ["sweep", "--resume", str(tmp_path), "--set", "seed=1"])
    assert result.exit_code == 2 and "go with -c" in result.output
    result = runner.invoke(app, ["sweep", "--report", str(tmp_path)])
    assert result.exit_code == 2 and "not an edgecl sweep directory" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "sweep": {"grid": {"seed": [1]}}}))
    result = runner.invoke(app, ["sweep", "-c", str(bad)])
    assert result.exit_code == 2 and "use sweep.seeds" in result.output
    assert result.output.count("\n") == 1


def test_an_unrecorded_ray_error_is_recorded_after_the_sweep(tmp_path):
    from types import SimpleNamespace

    from edgecl.sweep.driver import record_errors
    from edgecl.sweep.records import TrialRecord, read_events, read_record, write_record

    sweep = make({})
    config = {"cell": {"method": "er", "grid": {}}, "seed": 5, "sample": {}}
    trial_dir = tmp_path / "trials" / "er-seed5"
    write_record(trial_dir, TrialRecord(key="er-seed5", label="er", method="er", seed=5,
                                        params={}, status="running"))
    killed = SimpleNamespace(config=config, error=RuntimeError(
        "Task was killed due to the node running low on memory.\nMemory on the node: ..."))
    record_errors(sweep, tmp_path, [killed, SimpleNamespace(config=config, error=None)])
    record = read_record(trial_dir)
    assert record.status == "failed"
    assert record.error == "RuntimeError: Task was killed due to the node running low on memory."
    assert [e["event"] for e in read_events(trial_dir)] == ["failed"]
    record_errors(sweep, tmp_path, [killed])  # recorded once
    assert [e["event"] for e in read_events(trial_dir)] == ["failed"]
