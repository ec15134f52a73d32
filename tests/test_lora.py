import types

import numpy as np
import pytest
import torch

from common import lora
from common.models import BiEncoder, CrossEncoder
from common.run import UserError
from common.training import setup_lora

TEXTS = ["how to sort a list", "read a file line by line", "parse json from a string", "x"]


def cfg(**kw):
    base = dict(lora_r=4, lora_alpha=8.0, lora_dropout=0.0, lora_targets=["query", "key", "value", "dense"],
                lora_save="merged")
    return types.SimpleNamespace(**{**base, **kw})


def nudge(model):  # B starts at zero (the update is 0): give it values, as training would
    torch.manual_seed(0)
    for m in lora.layers(model).values():
        torch.nn.init.normal_(m.lora_B, std=0.05)


def test_only_the_adapter_and_a_rerankers_head_receive_gradients(tiny_model):
    enc = BiEncoder.from_pretrained(tiny_model)
    setup_lora(enc, cfg(), master=False)
    batch = enc.tokenize(TEXTS, "passage")
    enc(batch["input_ids"], batch["attention_mask"]).sum().backward()
    for name, p in enc.named_parameters():
        assert p.requires_grad == (".lora_" in name), name
        assert (p.grad is not None) == (".lora_" in name and ".pooler." not in name), name

    cross = CrossEncoder.from_pretrained(tiny_model)
    setup_lora(cross, cfg(), trainable=(".classifier.",), master=False)
    cross(**cross.tokenize(TEXTS, TEXTS[::-1])).sum().backward()
    trained = {n for n, p in cross.named_parameters() if p.grad is not None}
    assert trained and all(".lora_" in n or ".classifier." in n for n in trained)
    assert {n for n in trained if ".classifier." in n} == {"model.classifier.weight", "model.classifier.bias"}
    assert 0 < lora.trainable_parameters(cross) < sum(p.numel() for p in cross.parameters()) / 2


def test_merged_weights_give_the_adapted_models_outputs(tiny_model, tmp_path, fp32_cpu):
    enc = BiEncoder.from_pretrained(tiny_model)
    enc.add_lora(4, 8.0, 0.0, ["query", "value"])
    nudge(enc.model)
    adapted = enc.encode(TEXTS)
    assert not np.allclose(adapted, BiEncoder.from_pretrained(tiny_model).encode(TEXTS), atol=1e-4)  # it adapts
    enc.save(str(tmp_path / "merged"))  # save_merged by default: plain weights, no lora files
    assert not (tmp_path / "merged" / "lora.json").exists()
    plain = BiEncoder.from_pretrained(str(tmp_path / "merged"))
    assert plain.lora is None
    np.testing.assert_allclose(plain.encode(TEXTS), adapted, atol=1e-5)

    enc.save_merged = False  # the trunk and the adapter beside it: loads back wrapped, the same outputs
    enc.save(str(tmp_path / "adapter"))
    again = BiEncoder.from_pretrained(str(tmp_path / "adapter"))
    assert again.lora == {"r": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["query", "value"]}
    np.testing.assert_allclose(again.encode(TEXTS), adapted, atol=1e-6)


def test_a_reranker_merges_too(tiny_model, tmp_path, fp32_cpu):
    cross = CrossEncoder.from_pretrained(tiny_model)
    cross.add_lora(4, 8.0, 0.0, ["query", "dense"])
    nudge(cross.model)
    scores = cross.score(TEXTS, TEXTS[::-1])
    cross.save(str(tmp_path / "merged"))
    np.testing.assert_allclose(CrossEncoder.from_pretrained(str(tmp_path / "merged")).score(TEXTS, TEXTS[::-1]),
                               scores, atol=1e-5)


def test_targets_that_match_nothing_say_what_there_is(tiny_model):
    enc = BiEncoder.from_pretrained(tiny_model)
    with pytest.raises(UserError, match="matched no linear layer.*query"):
        setup_lora(enc, cfg(lora_targets=["q_proj"]), master=False)
