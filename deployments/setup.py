"""Create sftjudge's work pools and its GPU concurrency limit on the current Prefect server, idempotently.

    python deployments/setup.py                      # cpu + gpu process pools, limit "gpu" = 1
    python deployments/setup.py --gpu-type kubernetes --gpu-slots 4

Safe to run again: existing pools get their base job template updated, an existing limit its slot count.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFECT = str(Path(sys.executable).with_name("prefect"))


def prefect(*args: str, ok_if: str | None = None) -> None:
    done = subprocess.run([PREFECT, *args], capture_output=True, text=True)
    output = done.stdout + done.stderr
    if done.returncode != 0 and not (ok_if and ok_if in output):
        raise SystemExit(f"prefect {' '.join(args)} failed:\n{output}")
    print(f"prefect {' '.join(args[:3])}: ok")


def ensure_pool(name: str, pool_type: str) -> None:
    template = HERE / "job-templates" / f"{pool_type}.json"
    prefect("work-pool", "create", name, "--type", pool_type, "--base-job-template", str(template), "--overwrite")


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
    args = parser.parse_args()
    ensure_pool(args.cpu_pool, "process")
    ensure_pool(args.gpu_pool, args.gpu_type)
    ensure_limit("gpu", args.gpu_slots)


if __name__ == "__main__":
    main()
