"""Workload functions for bench/local_throughput.py."""

import time

BURN_SECONDS = 0.005


def burn(item, ctx=None):
    """Spin the CPU for about 5 ms (CPU time, not sleep)."""
    end = time.process_time() + BURN_SECONDS
    x = 0
    while time.process_time() < end:
        x += 1
    return {"spins": x}


def noop(item, ctx=None):
    return {}
