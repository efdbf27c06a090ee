"""Trials as Ray tasks.

Every node offers one ``benchmark_slot`` (a custom Ray resource: ``ray start --resources '{"benchmark_slot": 1}'``;
a local Ray started here gets it by itself) and every trial task takes one, so no two trials, and therefore no two
benchmark phases, run at once on one node. A trial is one task (its training, export and measurement together):
splitting it into a parallel training task and a slot-holding measurement task would need the run's in-memory
state moved between tasks, so whole trials are serialised per node and the nodes run in parallel. Results come
back to the driver, which tells the one Optuna study and logs to the one MLflow experiment. Within a trial, the
machine-wide reader/writer lock (``trial.machine_lock``) is shared while it trains and exclusive while it
measures: several Ray nodes on one host (the loopback test cluster) train side by side, but a measurement never
runs beside another trial's training or measurement.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

from edgecraft.core.errors import EdgecraftError

SLOT = "benchmark_slot"


class RayTrials:
    def __init__(self, address: str | None, workers: int, run: Callable[..., dict]):
        if address and address != "auto":
            _check_reachable(address)
        import ray

        try:
            if address:
                ray.init(address=address, log_to_driver=False, ignore_reinit_error=True)
            else:
                ray.init(
                    num_cpus=workers,
                    resources={SLOT: workers},
                    include_dashboard=False,
                    log_to_driver=False,
                    ignore_reinit_error=True,
                )
        except Exception as exc:  # noqa: BLE001 - an address that does not answer, a cluster that will not start
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EdgecraftError(
                f"--ray-address {address or '(local)'}: cannot connect to Ray: {first[:300]}"
            ) from None
        slots = int(ray.cluster_resources().get(SLOT, 0))
        if slots < 1:
            ray.shutdown()
            raise EdgecraftError(
                f"--ray-address {address}: no node offers a {SLOT}; start each node with "
                f"ray start --resources '{{\"{SLOT}\": 1}}'"
            )
        self.ray = ray
        # Ray sets OMP_NUM_THREADS to a task's CPUs (1): training would sum in another order than here and give
        # other weights. Trials train with this process's thread count, so a seed gives the same models anywhere.
        import torch

        self.torch_threads = torch.get_num_threads()
        self.task = ray.remote(num_cpus=1, resources={SLOT: 1}, max_retries=0)(_call)
        self.run = run

    def map(self, calls: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Submit every call as a task (Ray queues them on the benchmark slots); yield the outcomes in order, each
        as soon as it is done. A task that dies is that trial's failure only."""
        futures = [self.task.remote(self.run, call, self.torch_threads) for call in calls]
        for call, future in zip(calls, futures):
            try:
                yield self.ray.get(future)
            except Exception as exc:  # noqa: BLE001 - a worker that crashed
                yield {
                    "number": call["number"],
                    "values": call["values"],
                    "state": "failed",
                    "reason": f"Ray task failed: {str(exc).strip().splitlines()[-1][:300]}",
                }

    def close(self) -> None:
        self.ray.shutdown()


def _call(run: Callable[..., dict], call: dict[str, Any], torch_threads: int) -> dict[str, Any]:
    import ray
    import torch

    torch.set_num_threads(torch_threads)

    outcome = run(**call)
    outcome["ray_node"] = ray.get_runtime_context().get_node_id()
    return outcome


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail in seconds on a head that does not answer (Ray itself waits minutes for its GCS)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise EdgecraftError(f"--ray-address {address}: no Ray head answers there ({exc})") from None
