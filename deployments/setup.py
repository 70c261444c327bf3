"""Create sftjudge's work pools and its GPU concurrency limit on the current Prefect server, idempotently.

    python deployments/setup.py                      # cpu + gpu process pools, limit "gpu" = 1
    python deployments/setup.py --gpu-type kubernetes --gpu-slots 4
    python deployments/setup.py --runs-per-worker 2     # workers started with --limit 2 share their cores
    python deployments/setup.py --notify-url https://hooks.example/sftjudge   # notify on rollback, promotion, failure

Each flow run takes max(1, cores // runs per worker) torch threads (sftjudge/runtime/threads.py): the pools'
job templates carry SFTJUDGE_RUNS_PER_WORKER, which must match the --limit the workers are started with.

Safe to run again: existing pools get their base job template updated, an existing limit its slot count.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFECT = str(Path(sys.executable).with_name("prefect"))


def prefect(*args: str, ok_if: str | None = None) -> None:
    done = subprocess.run([PREFECT, *args], capture_output=True, text=True)
    output = done.stdout + done.stderr
    if done.returncode != 0 and not (ok_if and ok_if in output):
        raise SystemExit(f"prefect {' '.join(args)} failed:\n{output}")
    print(f"prefect {' '.join(args[:3])}: ok")


RUNS_ENV = "SFTJUDGE_RUNS_PER_WORKER"  # read by sftjudge/runtime/threads.py in every flow run


def job_template(pool_type: str, runs_per_worker: int) -> dict:
    """The pool type's base job template with SFTJUDGE_RUNS_PER_WORKER in the flow runs' default environment."""
    template = json.loads((HERE / "job-templates" / f"{pool_type}.json").read_text())
    env = template["variables"]["properties"]["env"]
    env["default"] = dict(env.get("default") or {}) | {RUNS_ENV: str(runs_per_worker)}
    return template


def ensure_pool(name: str, pool_type: str, runs_per_worker: int) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(job_template(pool_type, runs_per_worker), handle)
    try:
        prefect("work-pool", "create", name, "--type", pool_type, "--base-job-template", handle.name,
                "--overwrite")
    finally:
        Path(handle.name).unlink()


def ensure_limit(name: str, slots: int) -> None:
    created = subprocess.run([PREFECT, "global-concurrency-limit", "create", name, "--limit", str(slots)],
                             capture_output=True, text=True)
    if created.returncode != 0:
        prefect("global-concurrency-limit", "update", name, "--limit", str(slots))
    else:
        print(f"prefect global-concurrency-limit create {name}: ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-pool", default="cpu")
    parser.add_argument("--gpu-pool", default="gpu")
    parser.add_argument("--gpu-type", default="process", choices=["process", "docker", "kubernetes"],
                        help="worker type of the GPU pool (docker/kubernetes need prefect-docker/prefect-kubernetes)")
    parser.add_argument("--gpu-slots", type=int, default=1, help="GPU stages allowed at once (one per card)")
    parser.add_argument("--runs-per-worker", type=int, default=1,
                        help="flow runs one worker executes at once (start workers with the same --limit); "
                             "each run gets max(1, cores // this) torch threads instead of every core")
    parser.add_argument("--notify-url", help="webhook that automations call on a rollback, a promotion and a failed "
                                             "or crashed run (deployments/notify.py); without it none are created")
    args = parser.parse_args()
    if args.runs_per_worker < 1:
        parser.error("--runs-per-worker must be at least 1")
    ensure_pool(args.cpu_pool, "process", args.runs_per_worker)
    ensure_pool(args.gpu_pool, args.gpu_type, args.runs_per_worker)
    ensure_limit("gpu", args.gpu_slots)
    if args.notify_url:
        sys.path.insert(0, str(HERE))
        from notify import ensure_notifications

        for name in ensure_notifications(args.notify_url):
            print(f"automation {name!r}: ok")
    print(f"start workers with: prefect worker start --pool <pool> --limit {args.runs_per_worker}")


if __name__ == "__main__":
    main()
