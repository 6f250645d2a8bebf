"""Random-weight causal LMs of real shapes, built from a config (no weights travel to a GPU machine; see gpu_suite.sh).

    python benchmarks/gpu_models.py OUT_DIR [--dry]

writes OUT_DIR/smollm2-135m (SmolLM2-135M's shape: 30 layers, hidden 576, 9 query / 3 key-value heads, 49,152
tokens, tied embeddings) and OUT_DIR/llama-400m (a Llama of ≈0.40B parameters: 28 layers, hidden 1024), each with
a word-level tokenizer whose every id decodes ("t0" … "t49151"; id 0 pad, 1 EOS), weights in bf16. With random
weights EOS is as likely as any token (1 in 49,152), so completions run their full length in every framework.
`--dry`: the same two names at toy sizes (CPU, seconds), for `GPU_SUITE_DRY=1`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

SHAPES = {  # name → LlamaConfig fields
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, rope_theta=100000.0),
    "llama-400m": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, rope_theta=100000.0),
}
DRY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
VOCAB, DRY_VOCAB = 49152, 512


def word_tokenizer(vocab: int):
    """A fast tokenizer over the words t0 … t{vocab−1} (split on spaces); id 0 is <pad>, id 1 <eos>, id 2 <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"t{i}": i for i in range(3, vocab)}}
    tk = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.padding_side = "left"
    return tok


def build(out: Path, name: str, dry: bool) -> Path:
    """One random-weight model folder (config, bf16 safetensors, tokenizer); kept if already there."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = out / name
    if (path / "config.json").exists():
        return path
    vocab = DRY_VOCAB if dry else VOCAB
    cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=0,
                      eos_token_id=1, bos_token_id=None, **(DRY if dry else SHAPES[name]))
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # initialising 0.4B weights on a GPU: seconds
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 1
    model.save_pretrained(path)
    word_tokenizer(vocab).save_pretrained(path)
    print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters → {path}", flush=True)
    return path


def prompts(n: int, vocab: int, words: int = 8, seed: int = 0) -> list[str]:
    """n prompts of `words` random words of the tokenizer (never pad, EOS or unk)."""
    import random

    rng = random.Random(seed)
    return [" ".join(f"t{rng.randrange(3, vocab)}" for _ in range(words)) for _ in range(n)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--dry", action="store_true")
    args = p.parse_args()
    for name in SHAPES:
        build(Path(args.out), name, args.dry)


if __name__ == "__main__":
    main()
