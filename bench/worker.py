"""The benchmark child process: measures one (model file, target) and writes raw numbers to a JSON file.

Run as ``python -m bench.worker JOB.json``. It runs in a fresh process so that each measurement starts from the
same state (no warm caches, no memory left over from another runtime), and it imports only numpy, the target
registry and the one runtime it measures: no torch, no TensorFlow.
"""

from __future__ import annotations

import importlib
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory, in MiB.

    Linux's VmHWM first: ``ru_maxrss`` survives ``exec`` there, so a child started by a large parent (one that
    imported torch) would report the parent's peak. Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run_job(job: dict) -> dict:
    from targets import registry

    inputs = np.load(job["inputs"])
    target = registry.get(job["runtime"])

    start = time.perf_counter()
    importlib.import_module(target.python_module)
    import_s = time.perf_counter() - start
    rss_after_import = peak_rss_mb()

    options = target.options_model(**job["options"])
    start = time.perf_counter()
    session = target.load(Path(job["model"]), job["device"], job["threads"], options)
    load_s = time.perf_counter() - start
    rss_after_load = peak_rss_mb()

    single = [inputs[i : i + 1] for i in range(len(inputs))]
    start = time.perf_counter()
    target.run(session, single[0])
    first_inference_ms = (time.perf_counter() - start) * 1e3

    for i in range(job["warmup_runs"]):
        target.run(session, single[i % len(single)])

    samples_ms = []
    for i in range(job["runs"]):
        batch = single[i % len(single)]
        start = time.perf_counter_ns()
        target.run(session, batch)
        samples_ms.append((time.perf_counter_ns() - start) / 1e6)
    peak_rss = peak_rss_mb()

    # Accuracy in its own pass after the timed runs, so that it cannot disturb the latency or memory figures.
    batch_size = job["eval_batch"]
    outputs = np.concatenate(
        [target.run(session, inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    )
    np.save(job["outputs"], outputs)
    return {
        "import_s": import_s,
        "load_s": load_s,
        "first_inference_ms": first_inference_ms,
        "samples_ms": samples_ms,
        "peak_rss_mb": peak_rss,
        "rss_after_import_mb": rss_after_import,
        "rss_after_load_mb": rss_after_load,
        "runtime_info": target.describe(session),
    }


def main(argv: list[str]) -> int:
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    result = run_job(job)
    Path(job["result"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
