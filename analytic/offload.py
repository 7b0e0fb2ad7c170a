"""The tiers of a tiered prefix cache below the GPU (CPU DRAM, local disk): their names, how they
are filled, their default bandwidths, and :class:`Tiers`, the spec the simulator and the models take.
Kept light (no numpy) for the trace replay's start-up."""

from __future__ import annotations

from dataclasses import dataclass

from analytic.checks import check_positive

__all__ = ["DEFAULT_CPU_BANDWIDTH_GBPS", "DEFAULT_DISK_BANDWIDTH_GBPS", "GB", "MAX_TIER_BLOCKS", "OFFLOAD_MODES",
           "TIER_NAMES", "Tiers"]

TIER_NAMES = ("gpu", "cpu", "disk")  # a tiered prefix cache's tiers, top down
OFFLOAD_MODES = ("inclusive", "exclusive")  # the first is the default (vLLM's native offloading)
GB = 1e9  # bandwidths are in decimal GB/s, as the datasheets give them
# Host-to-device copies from pinned memory over PCIe 4.0 x16: 31.5 GB/s of raw link rate (16 GT/s x
# 16 lanes, 128b/130b), of which pinned cudaMemcpy typically reaches 24-26 GB/s (CUDA's
# bandwidthTest on A100 hosts). PCIe 5.0 x16 (H100) doubles it: pass {"cpu": 50} there.
DEFAULT_CPU_BANDWIDTH_GBPS = 25.0
# One local PCIe 4.0 NVMe SSD, sequential read: 5-7 GB/s on datasheets (e.g. Samsung PM1733 7.0,
# Intel P5510 6.5, Micron 7450 6.8); 6 is the middle. A RAID of several drives scales it.
DEFAULT_DISK_BANDWIDTH_GBPS = 6.0
MAX_TIER_BLOCKS = 2**40  # a CPU or disk tier beyond this (16 PB of 16-token bf16 8B-model blocks) is a typo


@dataclass(frozen=True)
class Tiers:
    """The tiers below the GPU of a tiered prefix cache: CPU DRAM and local disk, in blocks
    (0: no such tier), and how they are filled: ``inclusive`` (write-through: every block a
    request leaves on the GPU is also stored below) or ``exclusive`` (a victim cache: GPU evictions
    move down, blocks loaded back up leave the tier). The semantics: :mod:`kvsim.tiered`."""

    cpu_blocks: int = 0
    disk_blocks: int = 0
    mode: str = OFFLOAD_MODES[0]
    # Seconds to load one token's KV up from the tier (bytes per token / bandwidth): with a service
    # model, a hit from below the GPU costs this instead of its prefill compute.
    cpu_load_s_per_token: float = 0.0
    disk_load_s_per_token: float = 0.0

    def __post_init__(self) -> None:
        check_positive("cpu load time per token", self.cpu_load_s_per_token, allow_zero=True, at_most=1.0)
        check_positive("disk load time per token", self.disk_load_s_per_token, allow_zero=True, at_most=1.0)
        check_positive("cpu-capacity-blocks", self.cpu_blocks, integer=True, allow_zero=True, at_most=MAX_TIER_BLOCKS)
        check_positive("disk-capacity-blocks", self.disk_blocks, integer=True, allow_zero=True,
                       at_most=MAX_TIER_BLOCKS)
        if self.mode not in OFFLOAD_MODES:
            raise ValueError(f"offload-mode must be one of {', '.join(OFFLOAD_MODES)} (got {self.mode!r})")
        if self.disk_blocks and not self.cpu_blocks:
            raise ValueError("a disk tier needs a CPU tier above it: give --cpu-offload-gib (or the CPU capacity)")
        object.__setattr__(self, "cpu_blocks", int(self.cpu_blocks))
        object.__setattr__(self, "disk_blocks", int(self.disk_blocks))

    @property
    def names(self) -> tuple[str, ...]:
        """The tiers' names, GPU first: gpu, cpu and, with a disk tier, disk."""
        return TIER_NAMES if self.disk_blocks else TIER_NAMES[:2]

    @property
    def load_s_per_token(self) -> tuple[float, ...]:
        """Per tier, GPU first (0: nothing to load), the seconds to load one token up from it."""
        return (0.0, self.cpu_load_s_per_token, self.disk_load_s_per_token)[:len(self.names)]
