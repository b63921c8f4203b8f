"""Safe checkpoint loading: files from outside the pipeline are opened with weights_only=True, so a
crafted pickle cannot run code; loading one needs an explicit trust_checkpoint: true, and says why."""

from __future__ import annotations

import os

import pytest
import torch

from dreamer4_libero.fileio import TRUST_ENV, CheckpointTrustError, safe_torch_load
from dreamer4_libero.models.upstream import load_dynamics_checkpoint, read_checkpoint


class _Payload:
    """Unpickling this calls os.system: the attack a checkpoint file can carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "dynamics.pt"
    torch.save({"dynamics": {"w": torch.zeros(2)}, "args": {"d_model": 8}, "x": _Payload(marker)}, path)
    return path, marker


@pytest.mark.fault(
    fault="a crafted checkpoint whose pickle calls os.system (opened by every checkpoint loader)",
    guarantee="refused with an error naming the file and trust_checkpoint; the payload never runs",
)
def test_malicious_pickle_is_refused_and_never_executes(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    path, marker = _malicious(tmp_path)
    for load in (
        lambda: safe_torch_load(path),
        lambda: read_checkpoint(str(path)),
        lambda: load_dynamics_checkpoint(str(path)),
    ):
        with pytest.raises(CheckpointTrustError) as e:
            load()
        msg = str(e.value)
        assert str(path) in msg and "trust_checkpoint: true" in msg and "system" in msg, msg
    assert not marker.exists(), "the payload ran"
    print(
        "fault: crafted pickle calling os.system in a checkpoint; guarantee: refused with an error naming the "
        "file and trust_checkpoint, payload not executed"
    )


@pytest.mark.fault(
    fault="the same file with trust_checkpoint: true",
    guarantee="loaded with full unpickling and a warning saying why that is unsafe",
)
def test_trusted_checkpoint_loads_with_a_warning(tmp_path, monkeypatch):
    path, marker = _malicious(tmp_path)
    monkeypatch.setenv(TRUST_ENV, "1")
    with pytest.warns(UserWarning, match="trust_checkpoint"):
        ck = safe_torch_load(path)
    assert torch.equal(ck["dynamics"]["w"], torch.zeros(2))
    assert marker.exists()  # trust means full unpickling: exactly why it is off by default


@pytest.mark.fault(
    fault="a plain checkpoint (dicts, tensors, numbers, strings) from outside the pipeline",
    guarantee="opens with weights_only=True, no trust needed",
)
def test_plain_checkpoints_need_no_trust(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    path = tmp_path / "plain.pt"
    torch.save({"dynamics": {"w": torch.ones(3)}, "args": {"d_model": 8, "name": "x"}, "step": 5}, path)
    ck = safe_torch_load(path)
    assert ck["step"] == 5 and torch.equal(ck["dynamics"]["w"], torch.ones(3))


def test_config_switch_reaches_the_jobs():
    from dreamer4_libero.config import load_config

    assert load_config()["trust_checkpoint"] is False
    text = open(os.path.join(os.path.dirname(__file__), "..", "rules", "common.smk")).read()
    assert "export D4L_TRUST_CHECKPOINT={int(config['trust_checkpoint'])}" in text
