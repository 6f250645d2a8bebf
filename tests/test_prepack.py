"""Prepacked frozen linear weights (rewardtune/prepack.py): the same values and input gradients as
`F.linear` up to float rounding, the plain path wherever packing does not apply, and a LoRA policy
whose logits and adapter gradients do not change when its base layers are packed."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rewardtune import prepack
from rewardtune.config import LoraSettings
from rewardtune.models import apply_lora, load_causal_lm

pytestmark = pytest.mark.skipif(not prepack.available(), reason="this torch build has no oneDNN prepacked linear")


def frozen_linear(n_in: int, n_out: int, bias: bool = False) -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(n_in, n_out, bias=bias).requires_grad_(False)


@pytest.mark.parametrize("shape", [(5, 24), (3, 7, 24)])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_equals_f_linear_in_value_and_input_gradient(shape, bias):
    layer = frozen_linear(24, 40, bias)
    assert prepack.prepack_frozen_linears(layer) == 1
    x = torch.randn(*shape, requires_grad=True)
    y = layer(x)
    assert layer in prepack._PACKED  # the packed path ran
    ref = F.linear(x, layer.weight, layer.bias)
    assert y.shape == ref.shape and torch.allclose(y, ref, atol=1e-5)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    (gx_ref,) = torch.autograd.grad(ref, x, g)
    assert torch.allclose(gx, gx_ref, atol=1e-5)


def test_a_non_contiguous_input_is_accepted():
    layer = frozen_linear(24, 8)
    prepack.prepack_frozen_linears(layer)
    x = torch.randn(24, 6).t()  # (6, 24), strided
    assert not x.is_contiguous()
    assert torch.allclose(layer(x), F.linear(x, layer.weight), atol=1e-5)


def test_a_weight_changed_in_place_or_replaced_is_repacked():
    layer = frozen_linear(24, 8)
    prepack.prepack_frozen_linears(layer)
    x = torch.randn(4, 24)
    before = layer(x)
    with torch.no_grad():
        layer.weight.mul_(2.0)  # a tracked in-place change: the version counter moves
    assert torch.allclose(layer(x), 2.0 * before, atol=1e-5)
    layer.weight.data = torch.zeros(8, 24)  # replaced storage (a load with assign=True does this): the pointer moves
    assert torch.equal(layer(x), torch.zeros(4, 8))


def test_a_packed_model_still_deep_copies_and_unpacks():
    import copy

    layer = frozen_linear(24, 8)
    prepack.prepack_frozen_linears(layer)
    x = torch.randn(4, 24)
    y = layer(x)  # the packed copy now exists (kept off the layer)
    twin = copy.deepcopy(layer)
    assert prepack.is_packed(twin) and torch.allclose(twin(x), y, atol=1e-6)
    prepack.unpack(layer)
    assert not prepack.is_packed(layer) and layer not in prepack._PACKED


def test_trainable_bf16_and_autocast_take_the_plain_path():
    trainable = torch.nn.Linear(24, 8)
    assert prepack.prepack_frozen_linears(trainable) == 0  # not routed at all
    layer = frozen_linear(24, 8)
    prepack.prepack_frozen_linears(layer)
    layer.weight.requires_grad_(True)  # unfrozen after packing: the weight must get its gradient
    layer(torch.randn(3, 24)).sum().backward()
    assert layer.weight.grad is not None and layer not in prepack._PACKED
    layer.weight.requires_grad_(False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(3, 24)).dtype == torch.bfloat16  # autocast's bf16 matmul, as without packing
    assert layer not in prepack._PACKED
    bf16 = frozen_linear(24, 8).to(torch.bfloat16)
    assert prepack.prepack_frozen_linears(bf16) == 0


def test_lora_policy_logits_and_adapter_gradients_do_not_change(tiny_causal_lm_dir):
    torch.manual_seed(0)
    model, _ = load_causal_lm(str(tiny_causal_lm_dir))
    model = apply_lora(model, LoraSettings(r=4, alpha=8))
    for name, p in model.named_parameters():  # a non-zero adapter, so its gradient reaches lora_A
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    ids = torch.randint(3, 50, (3, 9))

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids).logits  # (3, 9, V)
        logits.log_softmax(-1)[..., 5].sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain_logits, plain_grads = run()
    frozen = sum(1 for m in model.modules() if type(m) is torch.nn.Linear and not m.weight.requires_grad)
    assert prepack.prepack_frozen_linears(model) == frozen > 0  # every base layer and the LM head
    packed_logits, packed_grads = run()
    assert torch.allclose(packed_logits, plain_logits, atol=1e-5)
    for name, g in plain_grads.items():
        assert torch.allclose(packed_grads[name], g, atol=1e-5, rtol=1e-4), name
    prepack.unpack(model)
    assert not any("forward" in vars(m) for m in model.modules() if type(m) is torch.nn.Linear)
    assert torch.equal(model(input_ids=ids).logits, plain_logits)  # back to F.linear, bit for bit


def test_no_packing_when_the_copies_would_take_too_much_of_the_free_memory(monkeypatch):
    layer = frozen_linear(24, 8)
    assert prepack.packed_bytes(layer) == 24 * 8 * 4
    monkeypatch.setattr(prepack, "available_memory", lambda: 4 * 24 * 8 * 4 - 1)  # a quarter is 1 byte short
    assert prepack.prepack_frozen_linears(layer, max_share=0.25) == 0 and "forward" not in vars(layer)
    monkeypatch.setattr(prepack, "available_memory", lambda: 4 * 24 * 8 * 4)
    assert prepack.prepack_frozen_linears(layer, max_share=0.25) == 1
