"""How busy the machine was during a measurement, split into this process (and its children) and everyone else.

The benchmark machine has 2 cores and may be shared: a number taken while other processes used a core is
not comparable with one taken on an idle machine, so every measurement reports the others' share.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass


def _machine_busy_s() -> float:
    """CPU seconds all cores spent not idle since boot (user+nice+system+irq+softirq+steal)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    ticks = [int(x) for x in fields]
    user, nice, system, idle, iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    self_ = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Usage:
    wall_s: float
    own_cpu_s: float
    others_cpu_s: float

    @property
    def own_cores(self) -> float:
        return self.own_cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def others_cores(self) -> float:
        return max(self.others_cpu_s, 0.0) / self.wall_s if self.wall_s else 0.0

    def describe(self) -> str:
        return (f"CPU: this process {self.own_cores:.2f} cores, other processes {self.others_cores:.2f} cores "
                f"(of {os.cpu_count()})")


class CpuMeter:
    """``with CpuMeter() as m: ...`` then ``m.usage``. Children count only once they have been waited for."""

    def __enter__(self) -> "CpuMeter":
        self._t, self._own, self._all = time.perf_counter(), _own_cpu_s(), _machine_busy_s()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t
        own = _own_cpu_s() - self._own
        busy = _machine_busy_s() - self._all
        self.usage = Usage(wall, own, busy - own)
