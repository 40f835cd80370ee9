"""Timing and the JSON result line shared by the peer scripts (peft_step.py, peft_decoder.py)."""

import json
import resource
import statistics
import time


def cpu_s():
    """This process's CPU time (user + system) in seconds."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(calls, fn):
    """Two warm-up calls, then `calls` timed ones: (times, busy cores over them)."""
    for _ in range(2):
        fn()
    times = []
    cpu0, wall0 = cpu_s(), time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times, (cpu_s() - cpu0) / (time.perf_counter() - wall0)


def report(args, times, busy, **extra):
    """Prints the one JSON line `cargo xtask bench` reads."""
    import peft
    import torch
    import transformers

    print(
        json.dumps(
            {
                "mode": args.mode,
                "threads": args.threads,
                "steps": args.steps,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "max_s": max(times),
                **extra,
                # Linux reports ru_maxrss in KiB.
                "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "busy_cores": busy,
                "torch": torch.__version__,
                "peft": peft.__version__,
                "transformers": transformers.__version__,
            }
        )
    )
