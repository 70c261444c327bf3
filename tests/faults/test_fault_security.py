"""Security: weights load from safetensors only, no pickled code runs, remote code stays off unless the config
says so, servers listen on 127.0.0.1 only, and no secret from the environment lands in a run or an artifact."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from sftjudge.config_yaml import load_config
from sftjudge.errors import ModelError
from sftjudge.generate.stage import generate_stage
from sftjudge.models.loading import load_causal_lm
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.train.stage import sft_stage

from .faultkit import REPO, clone_run, fault_config

pytestmark = pytest.mark.model


def model_dir_without_safetensors(tiny_model_dir: Path, out: Path) -> Path:
    """The tiny model as a transformers checkpoint whose weights are only a pickled pytorch_model.bin."""
    import torch

    out.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, out / f.name)
    model, _ = load_causal_lm(str(tiny_model_dir))
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    return out


def test_model_weights_load_from_safetensors_only(tiny_model_dir, tmp_path):
    pickled = model_dir_without_safetensors(tiny_model_dir, tmp_path / "bin-only")
    with pytest.raises(ModelError, match="model.safetensors"):
        load_causal_lm(str(pickled))


LORA = dict(method="lora", epochs=2, learning_rate=1e-3, warmup_ratio=0.0, weight_decay=0.0, batch_size=2,
            grad_accum=1, max_seq_len=64, lora_r=4, lora_alpha=8, lora_dropout=0.0,
            target_modules=("q_proj", "v_proj"), precision="fp32", seed=0)


def lora_model(tiny_model_dir: Path):
    from sftjudge.config import SFTConfig
    from sftjudge.train.loop import attach_adapters

    model, tok = load_causal_lm(str(tiny_model_dir))
    return attach_adapters(model, SFTConfig(**LORA)), tok


def lora_checkpoint(tiny_model_dir: Path, out: Path, training_state=None) -> Path:
    from sftjudge.models.chat import template_fingerprint
    from sftjudge.train.checkpoints import save_checkpoint

    model, tok = lora_model(tiny_model_dir)
    meta = {"epoch": 1, "method": "lora", "template_fingerprint": template_fingerprint(tok)}
    return save_checkpoint(model, tok, out, meta,
                           training_state=training_state)


def pickle_adapter(checkpoint: Path) -> None:
    """Replace the adapter's safetensors file by the same tensors pickled as adapter_model.bin."""
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(checkpoint / "adapter_model.safetensors")), checkpoint / "adapter_model.bin")
    (checkpoint / "adapter_model.safetensors").unlink()


def test_adapter_restore_reads_safetensors_only(tiny_model_dir, tmp_path):
    from sftjudge.train.checkpoints import restore_weights

    checkpoint = lora_checkpoint(tiny_model_dir, tmp_path / "epoch-1")
    pickle_adapter(checkpoint)
    model, _ = lora_model(tiny_model_dir)
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        restore_weights(model, checkpoint, "lora")


def test_generate_stage_refuses_a_checkpoint_without_safetensors(base_run, tmp_path):
    run_path = clone_run(base_run, tmp_path, "r1", reset=("generate", "judge"))
    best = Path(json.loads((run_path / files.SFT_SUMMARY).read_text())["best_checkpoint"])
    pickle_adapter(best)
    config = load_config(run_path / files.CONFIG)
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors weights"):
        generate_stage(str(run_path), config)
    assert not (run_path / files.GENERATIONS).exists()


def test_load_finetuned_refuses_an_adapter_without_safetensors(tiny_model_dir, tmp_path):
    from sftjudge.generate.loading import load_finetuned

    checkpoint = lora_checkpoint(tiny_model_dir, tmp_path / "epoch-1")
    pickle_adapter(checkpoint)
    with pytest.raises(ModelError, match="safetensors only"):
        load_finetuned(str(tiny_model_dir), checkpoint, precision="fp32")


class WritesAFile:
    """A pickle payload: unpickling it calls open(marker, "w") - code execution, visible as a new file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_training_state_never_runs_code_on_resume(tiny_model_dir, tmp_path):
    import torch
    from helpers import example

    from sftjudge.config import SFTConfig
    from sftjudge.train.loop import TrainData, train

    marker = tmp_path / "pwned"
    checkpoints = tmp_path / files.CHECKPOINTS
    lora_checkpoint(tiny_model_dir, checkpoints / "epoch-1", training_state={"optimizer": WritesAFile(marker)})
    model, tok = load_causal_lm(str(tiny_model_dir))
    rows = [example(i, f"question {i}", "answer") for i in range(4)]
    with pytest.raises(pickle.UnpicklingError):
        train(model, tok, TrainData(train=rows, val=rows[:2]), SFTConfig(**LORA), checkpoints)
    assert not marker.exists()
    torch.load(checkpoints / "epoch-1" / "training_state.pt", weights_only=False)  # the payload is live:
    assert marker.exists()  # a plain torch.load would have run it


EVIL_MODULE = """
from pathlib import Path
Path({marker!r}).write_text("remote code ran")
from transformers import PretrainedConfig, PreTrainedModel
class EvilConfig(PretrainedConfig):
    model_type = "sftjudge-evil"
class EvilModel(PreTrainedModel):
    config_class = EvilConfig
"""


def model_dir_with_remote_code(tiny_model_dir: Path, out: Path, marker: Path) -> Path:
    """The tiny model, but its config asks transformers to import evil.py (which writes `marker`)."""
    shutil.copytree(tiny_model_dir, out)
    config = json.loads((out / "config.json").read_text())
    config |= {"model_type": "sftjudge-evil",
               "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}}
    (out / "config.json").write_text(json.dumps(config))
    (out / "evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    return out


def test_remote_code_never_runs_unless_the_config_allows_it(tiny_model_dir, base_run, tmp_path):
    marker = tmp_path / "remote-code-ran"
    evil = model_dir_with_remote_code(tiny_model_dir, tmp_path / "evil-model", marker)
    assert load_config(None).sft.trust_remote_code is False
    with pytest.raises(ModelError, match="trust_remote_code"):
        load_causal_lm(str(evil))
    run_path = clone_run(base_run, tmp_path / "runs", "r1", reset=("sft", "generate", "judge"))
    config = load_config(run_path / files.CONFIG, [f"sft.base_model={evil}"])
    with pytest.raises(ModelError):
        sft_stage(str(run_path), config)
    assert not marker.exists()
    assert RunDir(run_path).stage_info("sft")["status"] == "failed"

    # The same directory with trust_remote_code on (in a child process with its own module cache): the code
    # runs. So the refusal above is the setting's doing, not a broken fixture.
    script = f"from sftjudge.models.loading import load_causal_lm\ntry:\n    load_causal_lm({str(evil)!r}, " \
             f"trust_remote_code=True)\nexcept Exception:\n    pass\n"
    env = os.environ | {"HF_MODULES_CACHE": str(tmp_path / "modules")}
    subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, timeout=300)
    assert marker.read_text() == "remote code ran"


def test_library_code_never_switches_remote_code_on_by_itself():
    offenders = [f"{p.name}:{n}" for p in (REPO / "sftjudge").glob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"trust_remote_code\s*=\s*True", line)]
    assert offenders == []


def listening_addresses(port: int) -> set[str]:
    """Local addresses of sockets listening on `port`, from /proc/net/tcp and tcp6 (Linux)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.mark.flow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from /proc (Linux)")
def test_the_prefect_test_server_listens_on_loopback_only(prefect_harness):
    from prefect.settings import PREFECT_API_URL

    url = urlparse(PREFECT_API_URL.value())
    assert url.hostname == "127.0.0.1"
    assert listening_addresses(url.port) == {"0100007F"}  # 127.0.0.1; never 0.0.0.0 or ::
    with socket.socket() as exposed:  # the check itself sees a server that listens on every interface
        exposed.bind(("0.0.0.0", 0))
        exposed.listen()
        assert listening_addresses(exposed.getsockname()[1]) == {"00000000"}


def test_compose_publishes_the_server_on_loopback_only():
    compose = yaml.safe_load((REPO / "docker/compose.yaml").read_text())
    published = [(name, port) for name, service in compose["services"].items()
                 for port in service.get("ports", [])]
    assert published, "the compose file publishes the Prefect UI/API"
    assert all(str(port).startswith("127.0.0.1:") for _, port in published), published


SECRETS = {
    "HF_TOKEN": "hf_FAKEsecretTOKEN0123456789abcdefXYZ",
    "HUGGING_FACE_HUB_TOKEN": "hf_FAKEotherTOKEN9876543210zyxwvu",
    "AWS_ACCESS_KEY_ID": "AKIAFAKEACCESSKEY0001",
    "AWS_SECRET_ACCESS_KEY": "FAKEawsSECRETkey/0123456789+abcdefghijKLM",
    "OPENAI_API_KEY": "sk-FAKEopenaiKEY0123456789abcdef",
    "DATABASE_URL": "postgresql://prefect:FAKEdbPASSWORD42@db.internal:5432/prefect",
}


@pytest.mark.flow
def test_no_environment_secret_reaches_a_run_directory_or_an_artifact(prefect_harness, tiny_data, tmp_path,
                                                                     monkeypatch):
    from prefect.client.orchestration import get_client
    from sftjudge.flows.cycle import fine_tune_then_judge

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    runs = tmp_path / "runs"
    summary = fine_tune_then_judge(fault_config(runs, tiny_data, "sft.epochs=1", "regression.enabled=true"))
    assert summary["status"] == "completed"

    needles = [v.encode() for v in SECRETS.values()] + [b"FAKEdbPASSWORD42"]
    files = [p for p in runs.rglob("*") if p.is_file()]
    assert any(p.name == "report.md" for p in files) and any(p.suffix == ".safetensors" for p in files)
    leaks = [f"{p.relative_to(runs)} holds {n.decode()[:12]}..." for p in files for n in needles
             if n in p.read_bytes()]
    assert leaks == []

    run_key = Path(summary["run_dir"]).name.lower()
    with get_client(sync_client=True) as client:
        artifacts = [a for a in client.read_artifacts() if a.key and run_key in a.key]
    assert {a.key.split("-")[0] for a in artifacts} >= {"data", "losses", "judge", "report"}
    for artifact in artifacts:
        text = json.dumps([artifact.key, artifact.description, artifact.data], default=str)
        assert not [n for n in needles if n.decode() in text], artifact.key
