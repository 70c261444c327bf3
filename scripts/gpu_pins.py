"""The GPU worker's two Python stacks, resolved by pip and pinned: check them, or write their constraints anew.

    python scripts/gpu_pins.py            # resolve both stacks against their constraints; fail on any difference
    python scripts/gpu_pins.py --write    # resolve both stacks afresh and rewrite docker/constraints-*.txt

The trainer stack (sftjudge[gpu,postgres] on PyPI's CUDA build of torch) and vLLM's stack (requirements/vllm.txt)
live in separate environments of docker/Dockerfile.gpu: vLLM pins fastapi<0.137 and Prefect 3.8.8 needs >=0.139,
so one environment holding both resolves only by backtracking to an old vLLM on another torch and a transformers
it never tested. Each stack is resolved alone by `pip install --dry-run --report` with pip's `--isolated` (no
local wheel folders or user config: what a fresh image build sees), on this machine's platform - linux x86_64,
CPython 3.11, the image's. A check fails when a stack does not resolve, when it resolves to any package or version
the constraints file does not pin, or when the documented versions (STACKS) moved. tests/test_gpu_images.py runs it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Stack:
    name: str
    requirements: tuple[str, ...]  # what the image installs (pip arguments, relative to the repository)
    constraints: str  # the file pinning every package of the resolved stack
    documented: dict[str, str] = field(default_factory=dict)  # the versions the README names
    never: tuple[str, ...] = ()  # packages that must not be in this environment


STACKS = (
    Stack("trainer", ("-e", ".[gpu,postgres]", "torch==2.13.0"), "docker/constraints-gpu.txt",
          documented={"torch": "2.13.0", "transformers": "5.25.0", "trl": "1.16.0", "peft": "0.21.2",
                      "accelerate": "1.16.0", "bitsandbytes": "0.50.2", "prefect": "3.8.8"},
          never=("vllm",)),
    Stack("vllm", ("-r", "requirements/vllm.txt"), "docker/constraints-vllm.txt",
          documented={"vllm": "0.33.0", "torch": "2.14.0", "transformers": "5.20.2"}, never=("prefect", "sftjudge")),
)


def normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def read_constraints(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[normalise(name)] = version.strip()
    return pins


def resolve(stack: Stack, constraints: Path | None = None, pip: str | None = None,
            background: bool = False) -> dict[str, str]:
    """name -> version of everything pip would install for `stack` (the project itself left out); `background`:
    at the lowest CPU priority (the test suite runs it beside its own tests on two cores).

    Raises RuntimeError with pip's own explanation when the stack does not resolve.
    """
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [pip or sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed",
                   "--quiet", "--disable-pip-version-check", "--report", str(report), *stack.requirements]
        if constraints is not None:
            command += ["-c", str(constraints)]
        done = subprocess.run((["nice", "-n", "19"] if background else []) + command, cwd=REPO,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the {stack.name} stack does not resolve ({' '.join(command[3:])}):\n"
                               + (done.stderr or done.stdout)[-3000:])
        installs = json.loads(report.read_text())["install"]
    return {normalise(i["metadata"]["name"]): i["metadata"]["version"] for i in installs
            if normalise(i["metadata"]["name"]) != "sftjudge"}


def problems(stack: Stack, resolved: dict[str, str], pins: dict[str, str]) -> list[str]:
    """What is wrong with a resolution against the stack's pins and documented versions (empty: nothing).

    >>> s = Stack("x", (), "c.txt", documented={"torch": "2.13.0"}, never=("vllm",))
    >>> problems(s, {"torch": "2.13.0", "numpy": "2.1.0"}, {"torch": "2.13.0", "numpy": "2.1.0"})
    []
    >>> problems(s, {"torch": "2.10.0", "vllm": "0.19.1"}, {"torch": "2.13.0"})  # doctest: +NORMALIZE_WHITESPACE
    ['torch 2.10.0 resolved, 2.13.0 pinned', 'vllm 0.19.1 resolved, not pinned',
     'torch is 2.10.0, documented 2.13.0', 'vllm must not be in the x environment']
    """
    found = []
    for name, version in sorted(resolved.items()):
        if name not in pins:
            found.append(f"{name} {version} resolved, not pinned")
        elif pins[name] != version:
            found.append(f"{name} {version} resolved, {pins[name]} pinned")
    found.sort(key=lambda line: line.split()[0])
    found += [f"{name} is {resolved.get(name)}, documented {version}" for name, version in stack.documented.items()
              if resolved.get(name) != version]
    found += [f"{name} must not be in the {stack.name} environment" for name in stack.never if name in resolved]
    return found


def write(stack: Stack, resolved: dict[str, str]) -> None:
    lines = [f"# Every package of the {stack.name} stack as pip resolves `{' '.join(stack.requirements)}` on linux "
             f"x86_64, CPython 3.11.", "# Written by scripts/gpu_pins.py --write; checked by tests/test_gpu_images.py."]
    lines += [f"{name}=={version}" for name, version in sorted(resolved.items())]
    (REPO / stack.constraints).write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="resolve afresh and rewrite the constraints files")
    parser.add_argument("--pip", help="the Python whose pip resolves (default: this one)")
    args = parser.parse_args(argv)
    failed = False
    for stack in STACKS:
        if args.write:
            resolved = resolve(stack, pip=args.pip)
            write(stack, resolved)
        path = REPO / stack.constraints
        resolved = resolve(stack, path, pip=args.pip)
        found = problems(stack, resolved, read_constraints(path))
        print(f"{stack.name}: {len(resolved)} packages, " + ", ".join(f"{n} {resolved.get(n)}" for n in stack.documented)
              + ("; " + "; ".join(found) if found else "; as pinned"))
        failed |= bool(found)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
