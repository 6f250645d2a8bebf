"""Fast CPU dropout: the mask's distribution, the attention path against SDPA, the model swap."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rewardtune import dropout as D


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_is_bernoulli_one_minus_p(p):
    torch.manual_seed(0)
    keep = D.keep_mask((1000, 1000), p)
    # 1e6 draws: the standard error of the mean is ≤ 0.0005, so 0.003 is six of them
    assert keep.dtype == torch.bool and abs(keep.float().mean().item() - (1 - p)) < 0.003
    halves = keep.view(2, -1).float().mean(-1)  # no drift between the two halves of the stream
    assert abs(halves[0] - halves[1]) < 0.005


def test_keep_mask_uses_every_16_bit_quarter():
    torch.manual_seed(1)
    keep = D.keep_mask((4, 250_000), 0.25).view(-1, 4).float().mean(0)  # element i % 4 comes from quarter i % 4
    # a sign bit never set (e.g. random_()'s [0, 2^63) range) would make one quarter keep everything
    assert torch.allclose(keep, torch.full((4,), 0.75), atol=0.005), keep


def test_dropout_zeroes_or_scales_and_is_identity_in_eval():
    torch.manual_seed(2)
    x = torch.randn(200, 300)
    y = D.dropout(x, 0.2)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.8)
    assert abs(kept.float().mean().item() - 0.8) < 0.01
    assert D.dropout(x, 0.2, training=False) is x and D.dropout(x, 0.0) is x
    layer = D.FastDropout(0.2).eval()
    assert layer(x) is x


def test_attention_with_dropout_is_sdpa_when_every_element_is_kept(monkeypatch):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 4, 5, 8) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[0, :, :, 3:] = False  # row 0: its last two keys are padding
    module = SimpleNamespace(training=True, is_causal=False)
    monkeypatch.setattr(D, "keep_mask", lambda shape, p, device="cpu": torch.ones(shape, dtype=torch.bool))
    out, _ = D.attention(module, q, k, v, mask, dropout=0.25, scaling=0.3)
    expected, _ = sdpa_attention_forward(SimpleNamespace(training=False, is_causal=False), q, k, v, mask,
                                         dropout=0.0, scaling=0.3)
    assert out.shape == expected.shape == (2, 5, 4, 8)  # (B, T, H, D)
    assert torch.allclose(out, expected / 0.75, atol=1e-5)  # kept probabilities are scaled by 1 / (1 − p)
    additive = torch.zeros(2, 1, 5, 5).masked_fill(~mask, float("-inf"))
    assert torch.allclose(D.attention(module, q, k, v, additive, dropout=0.25, scaling=0.3)[0], out, atol=1e-6)


def test_swapped_model_is_unchanged_in_eval_and_drops_in_training(tiny_encoder_dir):
    from rewardtune.models import load_classifier

    torch.manual_seed(4)
    stock, tok = load_classifier(str(tiny_encoder_dir), 2)
    fast, _ = load_classifier(str(tiny_encoder_dir), 2)
    fast.load_state_dict(stock.state_dict())
    D.use_fast_dropout(fast)
    assert fast.config._attn_implementation == D.ATTENTION
    assert not [m for m in fast.modules() if type(m) is torch.nn.Dropout]
    enc = tok(["a short one", "a somewhat longer sentence here"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(stock.eval()(**enc).logits, fast.eval()(**enc).logits, atol=1e-6)
        fast.train()
        assert not torch.allclose(fast(**enc).logits, fast(**enc).logits)  # dropout is active
