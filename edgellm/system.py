"""What the machine offers: physical cores, peak memory."""

from __future__ import annotations

import os
import resource
import sys


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core's SIMD units)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # macOS, Windows
        allowed = set(range(os.cpu_count() or 1))
    cores = set()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = phys = None
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "processor":
                    cpu = int(value)
                elif key == "physical id":
                    phys = value.strip()
                elif key == "core id" and cpu in allowed:
                    cores.add((phys, value.strip()))
    except (OSError, ValueError):
        pass
    return max(1, min(len(cores), len(allowed)) if cores else len(allowed))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
