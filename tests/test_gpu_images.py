"""The GPU worker's images and job templates, read as Docker, Kubernetes and pip read them (issue 25, items 1, 2, 10).

No Docker engine runs here, so what a container would execute is worked out from the Dockerfiles by Docker's own
rule (ENTRYPOINT + the command, the command replaced by a job template's), and the Python stacks the images
install are resolved by pip itself against PyPI (scripts/gpu_pins.py; the resolution starts when the session does,
tests/conftest.py, and runs beside the other tests).
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
IMAGES = {"gpu": REPO / "docker" / "Dockerfile.gpu", "cpu": REPO / "docker" / "Dockerfile.cpu"}
FLOW_RUN = ["prefect", "flow-run", "execute"]  # what a Docker or Kubernetes work pool runs in the container


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"use the exec form (a JSON list), not {arguments!r}"
    return value


def container_argv(dockerfile: Path, command: list[str] | None) -> list[str]:
    """What the container runs: ENTRYPOINT followed by `command` (a job template's) or else the image's CMD.
    Only official python base images are accepted here: they set no ENTRYPOINT of their own."""
    steps = _instructions(dockerfile)
    base = next(args for word, args in steps if word == "FROM")
    assert base.startswith("python:"), f"{dockerfile.name}: an unknown base image's ENTRYPOINT cannot be read: {base}"
    entrypoints = [_exec_form(args) for word, args in steps if word == "ENTRYPOINT"]
    cmds = [_exec_form(args) for word, args in steps if word == "CMD"]
    return (entrypoints[-1] if entrypoints else []) + (command if command is not None else cmds[-1])


@pytest.mark.parametrize("pool", sorted(IMAGES), ids=lambda pool: f"{pool}-image")  # "gpu" alone marks CUDA tests
def test_a_work_pool_can_start_a_flow_run_in_the_image(pool):
    # The job templates hand the flow-run command over as the container's command (Docker) or args (Kubernetes);
    # with `ENTRYPOINT ["prefect", "worker", "start"]` it became `prefect worker start prefect flow-run execute`.
    assert container_argv(IMAGES[pool], FLOW_RUN) == FLOW_RUN
    assert container_argv(IMAGES[pool], None) == ["prefect", "worker", "start", "--pool", pool, "--type", "process"]
    templates = REPO / "deployments" / "job-templates"
    docker = json.loads((templates / "docker.json").read_text())["job_configuration"]
    kubernetes = json.loads((templates / "kubernetes.json").read_text())["job_configuration"]
    container = kubernetes["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert docker["command"] == container["args"] == "{{ command }}" and "command" not in container


def test_compose_starts_each_worker_with_a_whole_command():
    services = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]
    for name in ("cpu-worker", "gpu-worker"):
        image = IMAGES[name.split("-")[0]]
        assert container_argv(image, services[name]["command"])[:3] == ["prefect", "worker", "start"], name


def _gib(size: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgKMG]i?[bB]?)", size).groups()
    return float(number) * {"k": 2**-20, "m": 2**-10, "g": 1}[unit[0].lower()]


def test_gpu_containers_get_shared_memory_for_nccl_and_vllm():
    services = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]
    gpu = services["gpu-worker"]
    assert gpu.get("ipc") == "host" or _gib(gpu["shm_size"]) >= 8  # Docker's default is 64 MB
    templates = REPO / "deployments" / "job-templates"
    docker = json.loads((templates / "docker.json").read_text())
    assert docker["job_configuration"]["container_create_kwargs"]["shm_size"] == "{{ shm_size }}"
    assert _gib(docker["variables"]["properties"]["shm_size"]["default"]) >= 8
    kubernetes = json.loads((templates / "kubernetes.json").read_text())
    pod = kubernetes["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    mounted = {m["name"] for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/dev/shm"}
    in_memory = {v["name"] for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"}
    assert mounted and mounted <= in_memory, "Kubernetes gives a pod 64 MB of /dev/shm unless a volume is mounted"
    assert _gib(kubernetes["variables"]["properties"]["shm_size"]["default"]) >= 8


def test_every_gpu_image_environment_is_installed_from_its_pins_and_checked():
    runs = [args for word, args in _instructions(IMAGES["gpu"]) if word == "RUN"]
    installs = [run for run in runs if re.search(r"pip install (?!--no-deps)", run)]
    assert len(installs) == 2, "one install per environment: /opt/vllm and /opt/venv"
    for run in installs:
        assert re.search(r"-c /opt/pins/constraints-(gpu|vllm)\.txt", run), run
        assert re.search(r"pip check", run), f"no `pip check` after: {run}"
    assert "SFTJUDGE_VLLM_PYTHON=/opt/vllm/bin/python" in IMAGES["gpu"].read_text()
    cpu = [args for word, args in _instructions(IMAGES["cpu"]) if word == "RUN" and "-e \".[postgres]\"" in args]
    assert cpu and "-c /opt/pins/constraints-gpu.txt" in cpu[0] and "pip check" in cpu[0]  # the same pins
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    # vLLM beside Prefect 3.8.8 resolves only by backtracking to vllm 0.19 on torch 2.10 (measured: 89 s of pip)
    assert not any(req.startswith("vllm") for reqs in extras.values() for req in reqs)


@pytest.mark.resolver
def test_both_gpu_stacks_resolve_on_pypi_exactly_as_pinned(gpu_resolutions):
    sys.path.insert(0, str(REPO / "scripts"))
    from gpu_pins import REPO as PINS_REPO
    from gpu_pins import STACKS, problems, read_constraints

    for stack in STACKS:
        resolved = gpu_resolutions[stack.name]
        assert problems(stack, resolved, read_constraints(PINS_REPO / stack.constraints)) == [], stack.name
    assert gpu_resolutions["trainer"]["torch"] != gpu_resolutions["vllm"]["torch"]  # why they are two environments


def test_the_pin_checker_names_every_difference():
    import doctest

    sys.path.insert(0, str(REPO / "scripts"))
    import gpu_pins

    assert doctest.testmod(gpu_pins).failed == 0


def test_the_gpu_smoke_script_parses_and_its_cycle_is_a_valid_config():
    import subprocess

    from sftjudge.config_yaml import load_config
    from sftjudge.models.embedded import EMBEDDED

    script = REPO / "bench" / "gpu_smoke.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    config = load_config(str(REPO / "configs" / "gpu-smoke.yaml"), [])
    # every GPU path in one cycle, on models that come from PyPI (the smoke machine has no model hub)
    assert (config.sft.quantization, config.sft.packing) == ("4bit", True)
    assert config.generate.backend == config.judge.backend == "vllm" and config.vllm.engine == "server"
    assert {config.sft.base_model, config.judge.model} <= set(EMBEDDED)
    text = script.read_text()
    for pins in ("docker/constraints-gpu.txt", "docker/constraints-vllm.txt"):
        assert f"-c {pins}" in text  # installed from the same pins as the image
    assert text.count('"$UV" pip check') == 2 and "gpu_smoke_report.py" in text
