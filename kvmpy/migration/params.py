"""Migration parameters and capabilities (QEMU's names and defaults) and the statistics query-migrate shows."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from kvmpy.memory.ramblock import PAGE_SIZE


@dataclass
class MigrationParameters:
    downtime_limit: int = 300  # ms the guest may stay stopped at switchover
    max_bandwidth: int = 128 << 20  # bytes/s (QEMU's MAX_THROTTLE)
    cpu_throttle_initial: int = 20  # % (auto-converge)
    cpu_throttle_increment: int = 10
    max_cpu_throttle: int = 99
    throttle_trigger_threshold: int = 50  # % of the bytes sent that a round may dirty before throttling
    x_max_rounds: int = 0  # kvmpy: switch over after this many rounds whatever remains (0: no limit)

    LIMITS = {"downtime_limit": (0, 2000 * 1000), "max_bandwidth": (0, 1 << 62),
              "cpu_throttle_initial": (1, 99), "cpu_throttle_increment": (1, 100),
              "max_cpu_throttle": (1, 99), "throttle_trigger_threshold": (1, 100), "x_max_rounds": (0, 1 << 31)}

    def to_qmp(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    def update(self, **values: int) -> None:
        """Set parameters; raises ValueError naming the first one out of range (nothing is set then)."""
        for name, v in values.items():
            lo, hi = self.LIMITS[name]
            if not lo <= v <= hi:
                raise ValueError(f"Parameter '{name.replace('_', '-')}' expects a value between {lo} and {hi}")
        for name, v in values.items():
            setattr(self, name, v)


CAPABILITIES = ("events", "auto-converge")


@dataclass
class MigrationStats:
    status: str = "none"
    start: float = 0.0
    total_time_ms: int = 0
    setup_time_ms: int = 0
    downtime_ms: int | None = None
    expected_downtime_ms: int = 0
    transferred: int = 0
    remaining: int = 0
    total: int = 0
    duplicate: int = 0
    normal: int = 0
    dirty_pages_rate: int = 0
    mbps: float = 0.0
    dirty_sync_count: int = 0
    rounds: int = 0
    throttle_percentage: int = 0
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_qmp(self, now_ms: int, auto_converge: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.status == "none":
            return out
        active = self.status in ("setup", "active", "cancelling", "device")
        out["total-time"] = now_ms if active else self.total_time_ms
        out["setup-time"] = self.setup_time_ms
        if active:
            out["expected-downtime"] = self.expected_downtime_ms
        elif self.downtime_ms is not None:
            out["downtime"] = self.downtime_ms
        if self.status != "setup":
            out["ram"] = {
                "transferred": self.transferred, "remaining": self.remaining, "total": self.total,
                "duplicate": self.duplicate, "skipped": 0, "normal": self.normal,
                "normal-bytes": self.normal * PAGE_SIZE, "dirty-pages-rate": self.dirty_pages_rate,
                "mbps": round(self.mbps, 3), "dirty-sync-count": self.dirty_sync_count,
                "page-size": PAGE_SIZE, "postcopy-requests": 0, "multifd-bytes": 0,
                "pages-per-second": 0, "precopy-bytes": self.transferred, "downtime-bytes": 0,
                "postcopy-bytes": 0,
            }
        if auto_converge and self.throttle_percentage:
            out["cpu-throttle-percentage"] = self.throttle_percentage
        if self.status == "failed" and self.error:
            out["error-desc"] = self.error
        return out
