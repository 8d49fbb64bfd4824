"""Backbone choice, identity and device/precision rules. A GPU cannot exist here: only its choice is mocked."""

import pytest
import torch
from safetensors.torch import save_file

from adapters.backbone import BackboneError, load_backbone, resolve_device, resolve_precision
from service.cli import main
from tests.support import TEST_DEVICE


def test_random_init_is_reproducible_and_identified(tiny_backbone):
    again = load_backbone("tiny-vit-test")
    assert again.identity == tiny_backbone.identity
    assert tiny_backbone.identity.pretrained == "random-init:seed=0"
    assert torch.equal(again.encode_texts(["a dog"]), tiny_backbone.encode_texts(["a dog"]))
    assert not any(p.requires_grad for p in again.model.parameters())
    assert not again.model.training


def test_local_checkpoint_is_identified_by_sha256(tiny_backbone, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_backbone.model.state_dict().items()}, str(path))
    loaded = load_backbone("tiny-vit-test", str(path))
    assert loaded.identity.pretrained is None
    assert len(loaded.identity.checkpoint_sha256) == 64
    assert torch.allclose(loaded.encode_texts(["x"]), tiny_backbone.encode_texts(["x"]))


def test_bad_backbone_settings_fail_clearly(tmp_path):
    with pytest.raises(BackboneError, match="unknown open_clip model"):
        load_backbone("no-such-model")
    with pytest.raises(BackboneError, match="checkpoint file not found"):
        load_backbone("tiny-vit-test", str(tmp_path / "missing.pt"))
    with pytest.raises(BackboneError, match="could not load"):
        load_backbone("tiny-vit-test", "openai")  # no such tag for this config, and no network


def test_serve_with_bad_backbone_prints_one_line(tmp_path, capsys):
    assert main(["serve", "--data-dir", str(tmp_path), "--backbone-model", "no-such-model"]) == 2
    assert "unknown open_clip model" in capsys.readouterr().err


def test_device_and_precision_rules(monkeypatch):
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert resolve_precision("bf16", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(BackboneError, match="CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_offline_default_is_reported(client):
    health = client.get("/healthz").json()
    # The suite's backbone is loaded on TEST_DEVICE ("cpu" unless PAS_TEST_DEVICE says otherwise) with the
    # default precision: what those resolve to on this machine (cpu, fp32 on a machine without a GPU).
    device = resolve_device(TEST_DEVICE)
    assert health["device"] == device.type
    assert health["precision"] == resolve_precision("auto", device)
    assert health["backbone"]["model_name"] == "tiny-vit-test"
    assert health["backbone_source"]


@pytest.mark.slow
def test_default_backbone_note_names_its_source():
    backbone = load_backbone()
    assert backbone.identity.model_name in ("miniworld-vit", "tiny-vit-test")
    assert "no backbone configured" in backbone.source_note
