"""The generative policy kinds as one seam: what differs between a causal LM and an encoder–decoder, chosen once by
`policy` (`family`) and handed to the trainers (generative RL, LM SFT, held-out evaluation), which are otherwise the
same code for both.

Both kinds keep a rollout as prompt ids ‖ completion ids with the completion in the last T columns, so the trainers'
tensors, masks, advantages and losses do not depend on the kind; only loading, sampling and the forward passes that
give log-probs (and PPO's hidden states) do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..algorithms import entropy_from_logits, logprobs_from_logits
from ..config import ConfigError
from ..models import load_causal_lm
from . import causal_lm, seq2seq
from .head import chunked_token_logprobs
from .positions import position_ids


@dataclass(frozen=True)
class LMFamily:
    """One kind of generative policy, each member with the causal LM's arguments (see `causal_lm.py`)."""

    kind: str  # the `policy` value
    load: Callable[..., tuple[Any, Any]]  # (name, dtype) → (model, tokenizer padded as sampling needs)
    sample: Callable[..., causal_lm.Rollout]  # K completions per prompt with log π_old of their tokens
    token_logprobs: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]  # log π (with gradient) and entropy
    token_logprobs_at: Callable[..., list[torch.Tensor]]  # log π at several temperatures from one pass (reference)
    token_outputs: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # PPO: log π, hidden, entropy
    completion_hidden: Callable[..., torch.Tensor]  # PPO's value pass: the hidden state before each token
    max_prompt_tokens: Callable[[Any, int], int]  # (model config, gen.max_new_tokens) → longest prompt
    encoder_decoder: bool  # what the model's config must say


def causal_token_outputs(model: Any, ids: torch.Tensor, mask: torch.Tensor, n: int,
                         temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log π, the LM head's input before each of the last `n` tokens and the entropy (no gradient), in one forward
    pass; the LM head runs in row chunks where it can (no (B, T, V) logits held).  ids (B, L) → (B, T), (B, T, H),
    (B, T)."""
    lm_head = causal_lm.chunkable_head(model)
    if lm_head is not None:
        # One pass per row (share_prompt=False): shuffled minibatch rows rarely share a prompt.
        hidden = causal_lm.completion_logits(model, ids, mask, n, hidden=True, share_prompt=False)  # (B, T, H)
        logp, ent = chunked_token_logprobs(hidden, lm_head, ids[:, -n:], temperature, entropy=True)
        return logp, hidden, ent
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), output_hidden_states=True,
                logits_to_keep=n + 1)
    logits = out.logits[:, :-1].float() / temperature  # (B, T, V)
    with torch.no_grad():
        ent = entropy_from_logits(logits)  # (B, T)
    return logprobs_from_logits(logits, ids[:, -n:]), out.hidden_states[-1][:, -n - 1:-1], ent


def _causal(name: str) -> Callable[..., Any]:
    """causal_lm.<name>, looked up at each call: a function patched or rebound there (tests, probes) is the one run."""
    return lambda *args, **kwargs: getattr(causal_lm, name)(*args, **kwargs)


CAUSAL_LM = LMFamily(
    "causal-lm", lambda *a, **k: load_causal_lm(*a, **k), _causal("sample"), _causal("token_logprobs"), _causal("token_logprobs_at"),
    causal_token_outputs, lambda model, ids, mask, n: causal_lm.completion_logits(model, ids, mask, n, hidden=True),
    lambda config, new: getattr(config, "max_position_embeddings", 2048) - new, encoder_decoder=False)
SEQ2SEQ = LMFamily(
    "seq2seq", seq2seq.load_seq2seq_lm, seq2seq.sample, seq2seq.token_logprobs, seq2seq.token_logprobs_at,
    seq2seq.token_outputs, seq2seq.completion_hidden, seq2seq.max_prompt_tokens, encoder_decoder=True)
FAMILIES = {f.kind: f for f in (CAUSAL_LM, SEQ2SEQ)}


def family(kind: str) -> LMFamily:
    """The family of `policy` = kind."""
    if kind not in FAMILIES:
        raise ConfigError(f"policy={kind!r} is not a generative policy kind; valid: {', '.join(FAMILIES)}")
    return FAMILIES[kind]


def family_of(model: Any) -> LMFamily:
    """The family of a loaded model, from its config (for a command given a checkpoint, which says what it is)."""
    inner = getattr(model, "module", model)
    return SEQ2SEQ if getattr(inner.config, "is_encoder_decoder", False) else CAUSAL_LM


def check_model_kind(fam: LMFamily, name: str) -> None:
    """`name`'s config says the architecture `fam` needs (read before any run folder exists or weights load)."""
    if seq2seq.is_encoder_decoder(name) == fam.encoder_decoder:
        return
    other = "seq2seq" if not fam.encoder_decoder else "causal-lm"
    what = "an encoder-decoder (T5, BART, Marian)" if fam.encoder_decoder else "a causal (decoder-only) LM"
    raise ConfigError(f"model.name={name} is not {what}, which policy={fam.kind} trains; set policy={other}, or give "
                      f"model.name {what}")
