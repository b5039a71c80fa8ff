"""CPU seconds and resident memory of a running process, read from /proc (Linux)."""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU seconds the process's live threads have run, in nanosecond resolution.

    The sum of /proc/PID/task/*/schedstat (run time per thread): /proc/PID/stat's
    utime + stime count in 10 ms ticks, too coarse for a peer that spends 50 us per
    message. A thread that ended between two reads takes its time with it, so this
    falls back to utime + stime when schedstat is missing."""
    try:
        total = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread ended while we looked
        return total / 1e9
    except FileNotFoundError:
        return stat_cpu_s(pid)


def stat_cpu_s(pid: int) -> float:
    """User plus system CPU seconds the process has used so far (utime + stime, in ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_kib(pid: int) -> int:
    """The process's resident set size in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class CpuMeter:
    """CPU seconds used by each named process between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, float] = {}

    def start(self) -> None:
        self.before = {name: cpu_s(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        return {name: cpu_s(pid) - self.before[name] for name, pid in self.pids.items()}
