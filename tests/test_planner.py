"""The planner: its formulas by hand, its knob search on a fake model, and one small real
config measured on this host (a random-weight ViT-Ti at 32 px on real CIFAR-100)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edgecl.cli import app
from edgecl.config import load_config
from edgecl.errors import ConfigError
from edgecl.metrics.devices import PROFILES, DeviceProfile, step_dram_bytes
from edgecl.planner import HOST, HostModel, KnobSpace, Line, Planner, StepModel, predict
from edgecl.planner.fit import halvings, search
from edgecl.planner.plan import resolve_device
from edgecl.planner.profile import Calibrator, calibration_batches, select_method

MIB = 2**20


# ---- formulas ----------------------------------------------------------------------------------
def test_line_fit():
    assert Line.fit([2, 4], [5, 9]) == Line(1.0, 2.0)
    assert Line.fit([3], [6]) == Line(0.0, 2.0)  # one point: through the origin
    line = Line.fit([1, 2, 3], [1, 2, 4])
    assert line.slope == pytest.approx(1.5) and line(2) == pytest.approx(7 / 3)


def steps_model(flops_per_sample: float = 1e9, saved_per_sample: float = 2 * MIB) -> StepModel:
    return StepModel(flops=Line(0.0, flops_per_sample), saved_bytes=Line(0.0, saved_per_sample),
                     samples=Line(0.0, 1.0), parameter_bytes=10 * MIB, gradient_bytes=4 * MIB,
                     optimizer_state_bytes=8 * MIB, buffer_bytes=6 * MIB)


def host_model(**kw) -> HostModel:
    base = dict(setup_rss_bytes=300 * MIB, setup_peak_bytes=400 * MIB, setup_buffer_bytes=MIB,
                overhead=Line(50 * MIB, 3 * MIB), task_end=Line(0.0, 0.0), fixed_seconds=0.05,
                flops_per_second=1e11,
                threads=2, memory_bytes=8192 * MIB)
    return HostModel(**{**base, **kw})


def test_host_prediction_by_hand():
    steps, host = steps_model(), host_model()
    p = predict(steps, host, 16, HOST)
    # setup 300 - 1 buffer already there + state (4 + 8 + 6) + saved 32 + overhead 50 + 48
    assert p.peak_memory_bytes == pytest.approx((299 + 18 + 32 + 98) * MIB)
    assert p.footprint_bytes == pytest.approx((32 + 10 + 18) * MIB)
    assert p.step_seconds == pytest.approx(0.05 + 16e9 / 1e11)
    assert p.joules_per_sample == pytest.approx(p.step_seconds * 2 * 10.0 / 16)
    assert p.samples_per_second == pytest.approx(16 / p.step_seconds)
    # tiny batch: the set-up peak (decoding the data set) is the process's peak
    assert predict(steps, host, 1, HOST).peak_memory_bytes == 400 * MIB
    assert p.fits() and not p.fits(budget_bytes=400 * MIB) and p.peak_phase == "steps"
    # a task end consolidating 100 samples at 2 MiB each on top of 350 MiB peaks higher
    end = host_model(task_end=Line(350 * MIB, 2 * MIB))
    q = predict(StepModel(**{**steps.__dict__, "consolidated": 100}), end, 16, HOST)
    assert q.peak_memory_bytes == pytest.approx((350 + 200 + 18) * MIB)
    assert q.peak_phase == "task end"


def test_device_time_and_energy_by_hand():
    nano = PROFILES["jetson_nano"]
    steps = steps_model()
    p = predict(steps, host_model(), 8, "jetson_nano")
    flops, dram = 8e9, 2 * 16 * MIB + 10 * MIB + 3 * 4 * MIB + 2 * 8 * MIB
    assert steps.dram_bytes(8) == pytest.approx(dram)
    assert step_dram_bytes(16 * MIB, 10 * MIB, 4 * MIB, 8 * MIB) == pytest.approx(dram)
    seconds = flops / (236e9 * 0.5) + dram / 25.6e9
    assert p.step_seconds == pytest.approx(seconds)
    energy = flops / (236e9 * 0.5) * 10.0 + dram * 40e-12
    assert p.joules_per_sample == pytest.approx(energy / 8)
    assert p.available_bytes == nano.memory_bytes - nano.reserved_bytes
    assert not p.measured_rate


def test_device_profiles():
    for name in ("jetson_nano", "jetson_orin_nano_8gb", "raspberry_pi_4", "raspberry_pi_5",
                 "snapdragon_8_gen_2"):
        prof = PROFILES[name]
        assert prof.memory_bytes >= 4 * 1024**3 and prof.dram_bytes_per_s > 0 and prof.source
        assert prof.sustained_flops == prof.sustained("fp32") == prof.peak() * \
            prof.sustained_fraction
    assert PROFILES["jetson_nano"].peak("fp16") == 472e9
    with pytest.raises(KeyError, match="known: fp32"):
        PROFILES["jetson_orin_nano_8gb"].peak("int8")
    bare = DeviceProfile("x", 1e9, 1.0, 1.0, 0.0, 1, "test")  # old positional form still works
    assert bare.step_seconds(1e9, 1e9) == pytest.approx(1.0)  # no bandwidth: no memory term
    assert resolve_device("this_host") == HOST
    with pytest.raises(ConfigError, match="unknown device 'toaster'; known: jetson_nano"):
        resolve_device("toaster")


# ---- the knob search on a fake model -------------------------------------------------------
def test_knob_space_order():
    assert halvings(16) == [16, 8, 4, 2, 1] and halvings(200, 3) == [200, 100, 50]
    space = KnobSpace.of({"batch_size": 16, "rm_sz": 200, "storage": "fp16", "split_layer": 10,
                          "n_layers": 12})
    variants = space.variants()
    assert variants[0] == {"rm_sz": 200, "split_layer": 10, "storage": "fp16"}
    assert variants[1] == {"rm_sz": 200, "split_layer": 10, "storage": "int8"}
    assert variants[2]["split_layer"] == 11 and variants[-1] == {
        "rm_sz": 50, "split_layer": 12, "storage": "int8"}
    assert len(variants) == 3 * 3 * 2


def test_search_best_first():
    space = KnobSpace.of({"batch_size": 8, "buffer_size": 100})

    def evaluate(variant):  # a buffer of n costs n MiB
        return StepModel(Line(0, 1e9), Line(0, 10 * MIB), Line(0, 1), 0, 0, 0,
                         variant["buffer_size"] * MIB)

    host = host_model(setup_peak_bytes=0, setup_buffer_bytes=0, overhead=Line(0, 0))
    # batch 8: 300 + 80 + buffer -> budget 440 fits buffer 50 and 25 at batch 8
    found = search(space, evaluate, host, 440 * MIB, HOST, method_index=1)
    assert [(s.batch_size, s.params["buffer_size"]) for s in found[:3]] == [
        (8, 50), (8, 25), (4, 100)]
    assert found[0].overrides() == ["methods.1.buffer_size=50"]
    assert found[2].overrides() == ["methods.1.train.batch_size=4"]
    assert "batch_size 8 -> 4" in found[2].describe()
    assert search(space, evaluate, host, 300 * MIB, HOST, method_index=0) == []


# ---- one small real config -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_cfg(cifar100_root):
    return load_config(None, [
        f"data.root={cifar100_root}", "data.train_per_class=4", "data.test_per_class=1",
        "data.n_tasks=10", "data.class_order=fixed",  # the stream shape these figures assume
        "backbone.weights=random", "backbone.img_size=32", "train.batch_size=8",
        "methods=[{name: latent_replay, split_layer: 9, rm_sz: 40, replay_order: random}]",
    ])


def test_calibration_batches():
    assert calibration_batches(16) == (2, 4, 8) and calibration_batches(8) == (2, 4)
    assert calibration_batches(256) == (2, 8, 16) and calibration_batches(1) == (1, 2)


def test_per_step_figures_are_linear_in_batch(small_cfg, one_thread):
    cal = Calibrator(small_cfg)
    prof = cal.profile(select_method(small_cfg, None), (2, 4, 8), warmup=0, steps=1, fill=3,
                       timed=False)
    two = StepModel.from_profile(prof.__class__(**{**prof.__dict__, "steps": prof.steps[:2]}))
    eight = prof.steps[2]
    assert two.flops(8) == pytest.approx(eight.flops, rel=0.01)
    assert two.saved(8) == pytest.approx(eight.saved_bytes, rel=0.02)
    assert two.samples(8) == pytest.approx(eight.samples, rel=0.01)
    assert eight.samples == 8 + 12  # 1.5 latents replayed per new sample (the mixing rule)
    assert prof.knobs == {"batch_size": 8, "rm_sz": 40, "storage": "fp32", "split_layer": 9,
                          "n_layers": 12}
    # the setup figures are the first batch size's (the high-water mark is reset before each
    # setup). Linux keeps RSS in per-thread counters synced lazily, so VmHWM can read a few
    # pages under an earlier VmRSS: 1 MiB of slack (the figures are ~1 GiB)
    assert prof.setup_rss_bytes > 0
    assert prof.steps[0].peak_rss_bytes >= prof.setup_rss_bytes - 2**20


def test_plan_and_fit_on_a_real_config(small_cfg, one_thread):
    planner = Planner(small_cfg, fresh=False)  # the CLI test below measures in fresh processes
    assert planner.batch_sizes == (2, 4)
    host = planner.plan(HOST)
    assert host.fits and "fits" in host.message()
    assert host.prediction.peak_memory_bytes > planner.host.setup_rss_bytes
    assert planner.host.flops_per_second <= planner.profile.matmul_flops_per_s
    tight = planner.plan(HOST, budget_mib=planner.host.setup_peak_bytes / MIB - 1)
    assert not tight.fits and tight.suggestions == []
    assert "loading the data and weights alone peaks" in tight.message()
    found = planner.fit(1e6, limit=2)  # everything fits: the config itself comes first
    assert found[0].changes == {} and found[0].overrides() == []
    assert found[1].changes == {"storage": ("fp32", "fp16")}
    # a deeper split and int8 latents: measured, and cheaper on every count
    deeper = planner.evaluate({"rm_sz": 40, "split_layer": 11, "storage": "int8"})
    assert deeper.flops(8) < planner.steps.flops(8)
    assert deeper.gradient_bytes < planner.steps.gradient_bytes
    assert deeper.buffer_bytes < planner.steps.buffer_bytes / 2


def test_cli_plan(small_cfg, cifar100_root, one_thread):
    runner = CliRunner()
    bad = runner.invoke(app, ["plan", "--device", "toaster"])
    assert bad.exit_code == 2 and "unknown device 'toaster'; known:" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    args = ["plan", "--data-root", str(cifar100_root), "-d", "host", "-d", "raspberry_pi_5",
            "--budget-mib", "100000"]
    for item in ("data.train_per_class=4", "backbone.weights=random", "backbone.img_size=32",
                 "train.batch_size=4", "methods=[{name: finetune}]"):
        args += ["--set", item]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "| host |" in out.output and "| raspberry_pi_5 |" in out.output
    assert "measured" in out.output
