"""Device profiles for energy and time *estimates* (never presented as measurements).

An estimate for a workload of F FLOPs moving B bytes of DRAM traffic on a profile is
``E = F / sustained_flops · load_watts + B · dram_joules_per_byte``: the compute at the
board's sustained fp32 rate and load power, plus the memory traffic; its time is
``T = F / sustained_flops + B / dram_bytes_per_s`` (:meth:`DeviceProfile.step_seconds`).
Figures are public datasheet numbers (peak rate, module power mode, DRAM size and bandwidth)
with a sustained fraction of peak; they are order-of-magnitude guides for comparing methods,
not predictions for one board. Peak rates of other precisions (``peak_flops``, e.g. fp16) are
listed where the datasheet gives them; fp32 is what edgecl trains in. ``reserved_bytes`` is an
*assumed* share of DRAM the operating system and its services keep, so a training process can
use ``available_bytes``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    peak_fp32_flops: float  # FLOP/s
    sustained_fraction: float  # of peak achieved by dense training kernels
    load_watts: float  # board/module power while computing
    dram_joules_per_byte: float
    memory_bytes: int
    source: str
    dram_bytes_per_s: float = 0.0  # peak DRAM bandwidth; 0: unknown (no memory-time term)
    reserved_bytes: int = 0  # assumed: kept by the OS and system services
    compute: str = "cpu"  # where training runs: "cpu" or "gpu" (shared DRAM on these boards)
    peak_flops: dict[str, float] = field(default_factory=dict, hash=False)  # other precisions

    @property
    def sustained_flops(self) -> float:
        return self.peak_fp32_flops * self.sustained_fraction

    @property
    def available_bytes(self) -> int:
        """DRAM a training process can use: the total less the assumed OS share."""
        return self.memory_bytes - self.reserved_bytes

    def peak(self, precision: str = "fp32") -> float:
        """Peak FLOP/s at ``precision`` (fp32, or one listed in ``peak_flops``)."""
        if precision == "fp32":
            return self.peak_fp32_flops
        if precision not in self.peak_flops:
            known = ", ".join(["fp32", *self.peak_flops])
            raise KeyError(f"{self.name}: no {precision} peak rate; known: {known}")
        return self.peak_flops[precision]

    def sustained(self, precision: str = "fp32") -> float:
        return self.peak(precision) * self.sustained_fraction

    def step_seconds(self, flops: float, dram_bytes: float, precision: str = "fp32") -> float:
        """Compute at the sustained rate plus DRAM traffic at peak bandwidth (added, not
        overlapped: a bound that is closer for the small kernels of edge training)."""
        memory = dram_bytes / self.dram_bytes_per_s if self.dram_bytes_per_s else 0.0
        return flops / self.sustained(precision) + memory

    def rate_precision(self, precision: str) -> str:
        """The precision whose peak an estimate uses for a run at ``precision``: its own where
        the device lists it; a bf16 run on a device with fp16 only (Jetsons before Orin,
        phones) at fp16, the 16-bit format that device would use; else fp32."""
        if precision == "fp32" or precision in self.peak_flops:
            return precision
        if precision == "bf16" and "fp16" in self.peak_flops:
            return "fp16"
        return "fp32"

    def estimate(self, flops: float, dram_bytes: float, precision: str = "fp32") -> dict:
        compute_s = flops / self.sustained(self.rate_precision(precision))
        joules = compute_s * self.load_watts + dram_bytes * self.dram_joules_per_byte
        return {"joules": joules, "compute_seconds": compute_s}

    def as_dict(self) -> dict:
        return asdict(self)


GIB = 1024**3
# Assumed OS shares: a Jetson's L4T Ubuntu desktop, Raspberry Pi OS with desktop, Android
# with its services and a few background apps (a foreground app gets the rest at best).
JETSON_RESERVED, PI_RESERVED, ANDROID_RESERVED = GIB, GIB // 2, 7 * GIB // 2

PROFILES: dict[str, DeviceProfile] = {
    "jetson_nano": DeviceProfile(
        "Jetson Nano (Maxwell 128-core GPU, 10 W mode)", 236e9, 0.5, 10.0, 40e-12, 4 * GIB,
        "NVIDIA Jetson Nano datasheet: 472 GFLOPS fp16 (236 fp32), 10 W mode, 4 GB LPDDR4, "
        "25.6 GB/s; OS share assumed 1 GiB",
        dram_bytes_per_s=25.6e9, reserved_bytes=JETSON_RESERVED, compute="gpu",
        peak_flops={"fp16": 472e9},
    ),
    "jetson_xavier_nx": DeviceProfile(
        "Jetson Xavier NX (Volta 384-core GPU, 15 W mode)", 845e9, 0.5, 15.0, 30e-12, 8 * GIB,
        "NVIDIA Jetson Xavier NX datasheet: 384 CUDA cores at 1.1 GHz, 15 W mode, 8 GB LPDDR4x, "
        "59.7 GB/s; OS share assumed 1 GiB",
        dram_bytes_per_s=59.7e9, reserved_bytes=JETSON_RESERVED, compute="gpu",
        peak_flops={"fp16": 1690e9},
    ),
    "jetson_orin_nano_8gb": DeviceProfile(
        "Jetson Orin Nano 8 GB (Ampere 1024-core GPU, 15 W mode)", 1.28e12, 0.5, 15.0, 25e-12,
        8 * GIB,
        "NVIDIA Jetson Orin Nano series datasheet: 1024 CUDA cores at up to 625 MHz "
        "(1024 x 2 x 0.625 GHz = 1.28 TFLOPS fp32), 7 W / 15 W modes, 8 GB 128-bit LPDDR5, "
        "68 GB/s; OS share assumed 1 GiB",
        dram_bytes_per_s=68e9, reserved_bytes=JETSON_RESERVED, compute="gpu",
    ),
    "raspberry_pi_4": DeviceProfile(
        "Raspberry Pi 4 (4x Cortex-A72 at 1.5 GHz)", 48e9, 0.35, 6.4, 60e-12, 4 * GIB,
        "4 cores x 1.5 GHz x 8 fp32 FLOP/cycle (NEON FMA); ~6.4 W under full CPU load; "
        "4 GB LPDDR4-3200 32-bit, 12.8 GB/s; OS share assumed 0.5 GiB",
        dram_bytes_per_s=12.8e9, reserved_bytes=PI_RESERVED,
    ),
    "raspberry_pi_5": DeviceProfile(
        "Raspberry Pi 5 8 GB (4x Cortex-A76 at 2.4 GHz)", 153.6e9, 0.35, 8.0, 45e-12, 8 * GIB,
        "Raspberry Pi 5 product brief: BCM2712, 4x Cortex-A76 at 2.4 GHz (2x 128-bit NEON FMA "
        "per core: 4 x 2.4 GHz x 16 = 153.6 GFLOPS fp32, fp16 arithmetic 2x), LPDDR4X-4267 "
        "32-bit (17.1 GB/s), 8 GB; ~8 W board power under full CPU load; OS share assumed "
        "0.5 GiB",
        dram_bytes_per_s=17.1e9, reserved_bytes=PI_RESERVED, peak_flops={"fp16": 307.2e9},
    ),
    "snapdragon_8_gen_2": DeviceProfile(
        "Phone, Snapdragon 8 Gen 2 class (8-core Kryo CPU, 8 GB)", 329e9, 0.3, 6.0, 20e-12,
        8 * GIB,
        "Qualcomm Snapdragon 8 Gen 2 product brief: 1x Cortex-X3 at 3.19 GHz, 2x A715 + 2x A710 "
        "at 2.8 GHz, 3x A510 at 2.0 GHz, LPDDR5X at 4200 MHz (64-bit, 67.2 GB/s); fp32 peak "
        "from NEON FMA widths (X3 4x128-bit: 102 GFLOPS, A715/A710 2x128-bit: 179, A510 "
        "2x64-bit: 48; fp16 2x); CPU training (as PyTorch runs on Android); ~6 W sustained "
        "SoC power; 8 GB phone, Android share assumed 3.5 GiB",
        dram_bytes_per_s=67.2e9, reserved_bytes=ANDROID_RESERVED, peak_flops={"fp16": 658e9},
    ),
}


def step_dram_bytes(saved_bytes: float, parameter_bytes: float, gradient_bytes: float,
                    optimizer_state_bytes: float) -> float:
    """DRAM traffic of one training step: activations written and read back once, weights
    read, gradients and optimizer state read and written."""
    return (2 * saved_bytes + parameter_bytes + 3 * gradient_bytes
            + 2 * optimizer_state_bytes)


HOST_WATTS_PER_THREAD = 10.0


def host_estimate(train_seconds: float, total_seconds: float, threads: int) -> dict:
    """This machine: measured wall time × an assumed 10 W per busy thread (no power meter)."""
    watts = HOST_WATTS_PER_THREAD * threads
    return {
        "train_joules": train_seconds * watts,
        "total_joules": total_seconds * watts,
        "profile": {
            "name": f"this host ({threads} threads)",
            "load_watts": watts,
            "source": "measured wall time x assumed 10 W per thread (power not measured)",
        },
    }
