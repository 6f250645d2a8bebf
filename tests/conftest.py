"""Shared fixtures: tiny random models (fast, offline) and the real bundled models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import make_tokenizer


def pytest_configure(config):
    # Never let a test wait on the network: an unreachable hub must fail at once.
    os.environ.setdefault("HF_ENDPOINT", "http://127.0.0.1:9")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT saved as a normal HF folder."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)  # the same weights whichever tests ran first
    tok = make_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    out = tmp_path_factory.mktemp("tiny-bert")
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_causal_lm_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 Llama saved as a normal HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = make_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def rewardtune_home(tmp_path_factory) -> Path:
    """A cache folder for the whole session; the real SmolLM2 conversion happens once into it."""
    home = os.environ.get("REWARDTUNE_TEST_HOME")
    return Path(home) if home else tmp_path_factory.mktemp("rewardtune-home")
