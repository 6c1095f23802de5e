"""The prediction model: measured per-step figures, scaled to a batch size and a device.

Per-step figures (:class:`StepModel`), fitted from a :class:`~edgecl.planner.profile.Profile`
as lines ``a + b·batch`` (a test checks that they are lines):

- executed training FLOPs, saved-for-backward bytes and samples through the model per step
  (replayed samples scale with the batch too: ER replays a batch, latent replay a fixed ratio);
- parameter, gradient, optimizer-state and buffer bytes, which do not depend on the batch
  (buffers scale with their capacity; the knob search measures each capacity it tries).

Peak resident memory of a training process on this host (:class:`HostModel`)::

    peak RSS = max(setup peak,
                   setup RSS + state + saved(b) + overhead(b),      # the training steps
                   task end(n) + state)                             # a task's consolidation

- *setup RSS*: measured once the run is set up: the interpreter, torch and its libraries,
  the scenario's images, the pretrained weights and the method's copy of them;
- *setup peak*: the high-water mark until then (decoding a data set can exceed training);
- *state*: gradients + optimizer state + method buffers (accounting, less the buffers that
  already existed at setup);
- *saved(b)*: the peak step's saved-for-backward bytes (accounting);
- *overhead(b) = c + w·b*: fitted (least squares) to the measured high-water marks at the
  calibration batch sizes. ``c`` is what the first training step touches once (kernel code
  pages, thread pools, allocator arenas); ``w`` is the per-sample working set beyond the saved
  activations (prefetched input batches, a frozen prefix's intermediates under no_grad,
  activation gradients during backward, allocator slack).

- *task end(n) = e0 + e·n*: the high-water mark during a task's end (less the state), fitted
  on the number ``n`` of samples the method consolidates there (LightCL's importance pass
  over its stash, latent replay's pending latents; 0 for methods whose task end does not grow
  with the task, which get the measured constant); ``n`` of a real run is the task's size
  (capped as the method caps it). It does not depend on the batch: the step's freed memory
  is what the consolidation reuses.

The accounting footprint (``saved + parameters + gradients + optimizer state + buffers``,
edgecl's device-independent training memory) is reported beside it.

Step time: on this host ``t0 + F / R``, with the fixed per-step time ``t0`` and the effective
rate ``R`` fitted to the measured step times (so R is *measured*, DRAM traffic included; at
most the host's measured matmul rate, which catches timing noise at the small batch); on
a device profile ``F / sustained rate + DRAM bytes / bandwidth``
(:meth:`~edgecl.metrics.devices.DeviceProfile.step_seconds`), without framework overhead.
Energy per sample: the step's energy (device: compute at load power plus DRAM traffic; host:
wall time x an assumed 10 W per thread) over the batch's new samples.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from edgecl.metrics.devices import HOST_WATTS_PER_THREAD, PROFILES, step_dram_bytes
from edgecl.planner.profile import Profile, StepFigures

MIB = 2**20


@dataclass(frozen=True)
class Line:
    """``intercept + slope·x``."""

    intercept: float
    slope: float

    def __call__(self, x: float) -> float:
        return self.intercept + self.slope * x

    @classmethod
    def fit(cls, xs: list[float], ys: list[float]) -> Line:
        """Least squares; one point: a line through the origin."""
        n = len(xs)
        if n == 1 or len(set(xs)) == 1:
            return cls(0.0, sum(ys) / sum(xs) if sum(xs) else 0.0)
        mx, my = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
        return cls(my - slope * mx, slope)


@dataclass(frozen=True)
class StepModel:
    """A method's per-step figures as functions of the batch size."""

    flops: Line
    saved_bytes: Line
    samples: Line
    parameter_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int
    buffer_bytes: int
    consolidated: int = 0  # samples consolidated at a task end of a real run

    @classmethod
    def from_profile(cls, profile: Profile) -> StepModel:
        steps = profile.steps
        b = [s.new_samples for s in steps]
        last = steps[-1]
        return cls(
            flops=Line.fit(b, [s.flops for s in steps]),
            saved_bytes=Line.fit(b, [float(s.saved_bytes) for s in steps]),
            samples=Line.fit(b, [s.samples for s in steps]),
            parameter_bytes=max(s.parameter_bytes for s in steps),
            gradient_bytes=last.gradient_bytes,
            optimizer_state_bytes=last.optimizer_state_bytes,
            buffer_bytes=max(s.buffer_bytes for s in steps),
            consolidated=profile.consolidated,
        )

    @property
    def state_bytes(self) -> int:
        return self.gradient_bytes + self.optimizer_state_bytes + self.buffer_bytes

    def saved(self, batch: int) -> float:
        return max(0.0, self.saved_bytes(batch))

    def footprint(self, batch: int) -> float:
        """edgecl's accounting: saved + parameters + gradients + optimizer state + buffers."""
        return self.saved(batch) + self.parameter_bytes + self.state_bytes

    def dram_bytes(self, batch: int) -> float:
        return step_dram_bytes(self.saved(batch), self.parameter_bytes, self.gradient_bytes,
                               self.optimizer_state_bytes)


def _overhead(profile: Profile, steps: StepModel) -> Line:
    """``c + w·b``: measured high-water mark minus setup RSS, state and saved activations."""
    base = profile.setup_rss_bytes - profile.setup_buffer_bytes
    b = [s.new_samples for s in profile.steps]
    rest = [s.peak_rss_bytes - base - _state(s) - s.saved_bytes for s in profile.steps]
    line = Line.fit(b, rest)
    if line.slope < 0:  # noise at tiny batches: no per-sample working set, the mean constant
        line = Line(sum(rest) / len(rest), 0.0)
    return line


def _task_end(profile: Profile) -> Line:
    """``e0 + e·n``: the task-end high-water mark less the state, by consolidated samples."""
    n = [float(s.consolidated) for s in profile.steps]
    rest = [float(s.task_end_peak_bytes - _state(s)) for s in profile.steps]
    line = Line.fit(n, rest) if len(set(n)) > 1 else Line(max(rest), 0.0)
    return line if line.slope >= 0 else Line(max(rest), 0.0)


def _state(s: StepFigures) -> int:
    return s.gradient_bytes + s.optimizer_state_bytes + s.buffer_bytes


def _time_fit(profile: Profile) -> tuple[float, float]:
    """(t0, R): ``t = t0 + F / R`` fitted to the median step times (least squares), kept
    physical: R at most the host's matmul rate (a faster fit is timing noise: R is then the
    matmul rate and t0 the mean remainder) and t0 >= 0 (a negative one, from a rate still
    rising with the batch: a line through the origin)."""
    points = [(s.flops, s.seconds) for s in profile.steps if s.seconds > 0]
    if not points:
        return 0.0, 1.0
    cap = profile.matmul_flops_per_s or float("inf")
    flops, seconds = [f for f, _ in points], [t for _, t in points]
    if len(points) >= 2 and len(set(flops)) > 1:
        line = Line.fit(flops, seconds)
        if line.slope > 0 and 1.0 / line.slope > cap:
            return max(0.0, sum(t - f / cap for f, t in points) / len(points)), cap
        if line.slope > 0 and line.intercept >= 0:
            return line.intercept, 1.0 / line.slope
    rate = sum(f * f for f in flops) / sum(f * t for f, t in points)
    return 0.0, min(cap, rate)


@dataclass(frozen=True)
class HostModel:
    """This host, calibrated on a profile's measured memory and step times."""

    setup_rss_bytes: int
    setup_peak_bytes: int
    setup_buffer_bytes: int
    overhead: Line  # resident bytes beyond setup, state and saved activations
    task_end: Line  # task-end high-water mark less the state, by consolidated samples
    fixed_seconds: float  # t0: per-step time that does not scale with FLOPs
    flops_per_second: float  # R: measured effective rate
    threads: int
    memory_bytes: int

    @classmethod
    def from_profile(cls, profile: Profile, steps: StepModel | None = None) -> HostModel:
        steps = steps or StepModel.from_profile(profile)
        t0, rate = _time_fit(profile)
        return cls(profile.setup_rss_bytes, profile.setup_peak_bytes,
                   profile.setup_buffer_bytes, _overhead(profile, steps), _task_end(profile),
                   t0, rate, profile.threads, host_memory_bytes())

    def rebased(self, resident_bytes: float) -> HostModel:
        """This model for a process whose resident set before training is ``resident_bytes``
        instead of the calibration's set-up (a learner: its own engines, store and RAM tier,
        no data set decoded). What training adds on top is unchanged."""
        shift = resident_bytes - self.setup_rss_bytes
        return dataclasses.replace(
            self, setup_rss_bytes=int(resident_bytes), setup_peak_bytes=int(resident_bytes),
            task_end=Line(self.task_end.intercept + shift, self.task_end.slope))

    def phases(self, steps: StepModel, batch: int) -> dict[str, float]:
        """Predicted peak RSS of each phase: set-up, training steps, task end."""
        base = self.setup_rss_bytes - self.setup_buffer_bytes
        training = base + steps.state_bytes + steps.saved(batch) + max(0.0, self.overhead(batch))
        return {"setup": float(self.setup_peak_bytes), "steps": training,
                "task end": self.task_end(steps.consolidated) + steps.state_bytes}

    def peak_rss(self, steps: StepModel, batch: int) -> float:
        return max(self.phases(steps, batch).values())

    def step_seconds(self, steps: StepModel, batch: int) -> float:
        return self.fixed_seconds + steps.flops(batch) / self.flops_per_second

    @property
    def watts(self) -> float:
        return HOST_WATTS_PER_THREAD * self.threads


def host_memory_bytes() -> int:
    """This machine's DRAM (``MemTotal``), or 0 where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


@dataclass(frozen=True)
class Prediction:
    """One configuration (batch size and knobs) on one device."""

    device: str  # the key: a PROFILES name or "host"
    device_name: str
    batch_size: int
    peak_memory_bytes: float  # predicted peak RSS of the training process
    footprint_bytes: float  # edgecl's accounting footprint
    available_bytes: float  # what the device leaves to training
    step_seconds: float
    joules_per_sample: float
    measured_rate: bool  # True on this host: the rate comes from the measured steps
    peak_phase: str = "steps"  # where the peak falls: setup, steps or task end

    @property
    def samples_per_second(self) -> float:
        return self.batch_size / self.step_seconds if self.step_seconds else 0.0

    def fits(self, budget_bytes: float | None = None) -> bool:
        limit = self.available_bytes if budget_bytes is None else budget_bytes
        if self.available_bytes:
            limit = min(limit, self.available_bytes)
        return self.peak_memory_bytes <= limit


HOST = "host"


def predict(steps: StepModel, host: HostModel, batch: int, device: str = HOST) -> Prediction:
    """``steps`` at ``batch`` on ``device``: a name of ``PROFILES``, or ``"host"`` (this
    machine, its rate measured)."""
    phases = host.phases(steps, batch)
    phase = max(phases, key=lambda k: phases[k])
    peak = phases[phase]
    footprint = steps.footprint(batch)
    if device == HOST:
        seconds = host.step_seconds(steps, batch)
        return Prediction(HOST, f"this host ({host.threads} threads, measured)", batch, peak,
                          footprint, host.memory_bytes, seconds,
                          seconds * host.watts / batch, measured_rate=True, peak_phase=phase)
    profile = PROFILES[device]
    flops, dram = steps.flops(batch), steps.dram_bytes(batch)
    joules = profile.estimate(flops, dram)["joules"]
    return Prediction(device, profile.name, batch, peak, footprint, profile.available_bytes,
                      profile.step_seconds(flops, dram), joules / batch, measured_rate=False,
                      peak_phase=phase)
