"""Device profiles for energy and time *estimates* (never presented as measurements).

An estimate for a workload of F FLOPs moving B bytes of DRAM traffic on a profile is
``E = F / sustained_flops · load_watts + B · dram_joules_per_byte``: the compute at the
board's sustained fp32 rate and load power, plus the memory traffic. Figures are public
datasheet numbers (peak fp32 rate, module power mode) with a sustained fraction of peak;
they are order-of-magnitude guides for comparing methods, not predictions for one board.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    peak_fp32_flops: float  # FLOP/s
    sustained_fraction: float  # of peak achieved by dense training kernels
    load_watts: float  # board/module power while computing
    dram_joules_per_byte: float
    memory_bytes: int
    source: str

    @property
    def sustained_flops(self) -> float:
        return self.peak_fp32_flops * self.sustained_fraction

    def estimate(self, flops: float, dram_bytes: float) -> dict:
        compute_s = flops / self.sustained_flops
        joules = compute_s * self.load_watts + dram_bytes * self.dram_joules_per_byte
        return {"joules": joules, "compute_seconds": compute_s}

    def as_dict(self) -> dict:
        return asdict(self)


GIB = 1024**3

PROFILES: dict[str, DeviceProfile] = {
    "jetson_nano": DeviceProfile(
        "Jetson Nano (Maxwell 128-core GPU, 10 W mode)", 236e9, 0.5, 10.0, 40e-12, 4 * GIB,
        "NVIDIA Jetson Nano datasheet: 472 GFLOPS fp16 (236 fp32), 10 W mode, 4 GB LPDDR4",
    ),
    "jetson_xavier_nx": DeviceProfile(
        "Jetson Xavier NX (Volta 384-core GPU, 15 W mode)", 845e9, 0.5, 15.0, 30e-12, 8 * GIB,
        "NVIDIA Jetson Xavier NX datasheet: 384 CUDA cores at 1.1 GHz, 15 W mode, 8 GB LPDDR4x",
    ),
    "raspberry_pi_4": DeviceProfile(
        "Raspberry Pi 4 (4x Cortex-A72 at 1.5 GHz)", 48e9, 0.35, 6.4, 60e-12, 4 * GIB,
        "4 cores x 1.5 GHz x 8 fp32 FLOP/cycle (NEON FMA); ~6.4 W under full CPU load",
    ),
}


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
