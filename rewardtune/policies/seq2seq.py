"""An encoder–decoder (T5, BART, Marian) as a policy: sampling with the log-probs of the sampled tokens, and token
log-probs of given completions, with the same names and arguments as the causal LM's (`causal_lm.py`), so that the
generative trainers reach either through `families.LMFamily`.

Shapes: P prompts, K samples each, B = P·K rows, Tp prompt (encoder) tokens, right-padded, T completion (decoder)
tokens, right-padded after EOS, V vocabulary, H hidden size.

A rollout keeps the causal LM's layout: `input_ids` = prompt ids ‖ completion ids, and the last T columns are the
completion. Here the prompt is the encoder's input and the completion the decoder's output: the decoder reads
[prefix] + completion[:-1] and the prefix's last position predicts completion token 0: the prefix is the model's
decoder start token, then the token its generation config forces first, if any (`forced_bos_token_id`: BART's
<s>, mBART's and NLLB's target language), which `generate` would give probability 1: it is no action.
Sampling runs the encoder once per prompt and repeats its states to the prompt's K rows, then decodes token by token
with the decoder's KV cache (self- and cross-attention); the training pass does the same with the encoder once per
group of rows sharing a prompt. Prompts are right-padded: BART and Marian number positions from the first column,
so left padding would move a prompt's positions. The decoder is causal, so what follows a row's EOS changes nothing
before it. The sampler is `sampling.TokenSampler`, as for the causal LM: the recorded log-prob is that of
softmax(logits / temperature), untruncated; no forced EOS, no repetition penalty (the rest of a checkpoint's
generation config is not applied: the policy is the model's softmax), and pad is never an action (`policy_logits`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..algorithms import entropy_from_logits, logprobs_from_logits, tempered_logprobs
from ..models import ModelError, load_tokenizer, resolve
from .causal_lm import GenSettings, Rollout, after_stop, cache_keyword, completion_mask, concat_rollouts, format_prompts
from .causal_lm import prompt_groups
from .sampling import TokenSampler, draw_uniforms


def is_encoder_decoder(name: str) -> bool:
    """Whether the model `name` (alias, folder, hub id) is an encoder–decoder, read from its config alone."""
    from transformers import AutoConfig

    return bool(getattr(AutoConfig.from_pretrained(resolve(name)), "is_encoder_decoder", False))


def load_seq2seq_lm(name: str, dtype: Any = None) -> tuple[Any, Any]:
    """(AutoModelForSeq2SeqLM, tokenizer with right padding) of an alias, a model folder or a hub id."""
    from transformers import AutoModelForSeq2SeqLM

    path = resolve(name)
    if not is_encoder_decoder(path):
        raise ModelError(f"model {name!r} is not an encoder-decoder (T5, BART, Marian); policy=seq2seq needs one "
                         "(a causal LM takes policy=causal-lm)")
    tok = load_tokenizer(path)
    tok.padding_side = "right"
    model = AutoModelForSeq2SeqLM.from_pretrained(path, **({"dtype": dtype} if dtype else {}))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


def load_trained_seq2seq(folder: Any) -> tuple[Any, Any]:
    """A seq2seq model saved as a LoRA adapter (`heldout.save_policy` with model.lora.r > 0): its base model, named in
    adapter_config.json, with the adapter on top, unmerged; the tokenizer saved beside it."""
    import json
    from pathlib import Path

    from peft import PeftModel

    base = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{Path(folder) / 'adapter_config.json'}: no base_model_name_or_path; the base model is unknown")
    model, _ = load_seq2seq_lm(base)
    tok = load_tokenizer(str(folder))
    tok.padding_side = "right"
    return PeftModel.from_pretrained(model, folder), tok


def _inner(model: Any) -> Any:
    """The model under DDP's wrapper (peft's wrapper forwards what is read here)."""
    return getattr(model, "module", model)


def decoder_start_id(model: Any) -> int:
    """The token the decoder starts from: the generation config's, else the model config's, else pad."""
    inner = _inner(model)
    for cfg in (getattr(inner, "generation_config", None), inner.config):
        start = getattr(cfg, "decoder_start_token_id", None)
        if start is not None:
            return int(start)
    return int(inner.config.pad_token_id)


def decoder_prefix(model: Any) -> list[int]:
    """What the decoder reads before its first action: the start token, then the forced first token if the
    generation config (or the model config) names one."""
    inner = _inner(model)
    for cfg in (getattr(inner, "generation_config", None), inner.config):
        forced = getattr(cfg, "forced_bos_token_id", None)
        if forced is not None:
            return [decoder_start_id(model), int(forced)]
    return [decoder_start_id(model)]


def eos_ids(model: Any, tok: Any) -> list[int]:
    eos = getattr(_inner(model).generation_config, "eos_token_id", None)
    return [eos] if isinstance(eos, int) else list(eos or [tok.eos_token_id])


# T5's and Marian's decoders start from pad, and nothing stops them from choosing it again; a chosen pad would end the
# row unrecorded (completion_mask cuts at the first pad): an action outside the loss. As `generate` does for Marian
# (bad_words_ids=[[pad]]), pad is no action here: its logit gets this value in sampling and in every log-prob pass
# alike, so sampled log-probs still equal a fresh forward. Finite, so that entropies stay finite (0 · log 0 is nan).
NO_ACTION = -1e9


def policy_logits(model: Any, logits: torch.Tensor) -> torch.Tensor:
    """The logits with pad taken out of the action set (unless pad is an EOS).  (..., V) → (..., V)"""
    inner = _inner(model)
    pad, eos = inner.config.pad_token_id, getattr(inner.generation_config, "eos_token_id", None)
    if pad is None or pad == eos or (isinstance(eos, (list, tuple)) and pad in eos):
        return logits
    return logits.index_fill(-1, torch.tensor([pad], device=logits.device), NO_ACTION)


def max_prompt_tokens(config: Any, max_new_tokens: int) -> int:
    """The longest encoder input: the encoder's positions (learned ones: BART, Marian; T5's are relative: 2048, as for
    a causal LM without the setting). The decoder's positions must hold `max_new_tokens`."""
    positions = getattr(config, "max_position_embeddings", None) or 2048
    if max_new_tokens > positions:
        raise ValueError(f"gen.max_new_tokens={max_new_tokens} is over the decoder's {positions} positions")
    return positions


@torch.no_grad()
def sample(model: Any, tok: Any, prompts: Sequence[str], k: int, gen: GenSettings, max_prompt_tokens: int,
           greedy: bool = False, share_prompt: bool = True, rows: int = 0, only: slice | None = None) -> Rollout:
    """K completions for each of P prompts, prompt-major, as `causal_lm.sample` (the same arguments: `rows` bounds
    the rows decoded at once, `only` decodes a share of the prompts with the draws all of them would get; the
    encoder always runs once per prompt, so `share_prompt` changes nothing here)."""
    texts = format_prompts(tok, prompts, gen.chat_template)
    enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=not gen.chat_template)
    too_long = [i for i, m in enumerate(enc["attention_mask"]) if int(m.sum()) > max_prompt_tokens]
    if too_long:
        raise ValueError(f"{len(too_long)} prompt(s) longer than the encoder's {max_prompt_tokens} tokens, first: "
                         f"{prompts[too_long[0]][:120]!r}")
    was_training = model.training
    model.eval()
    try:
        P, device = len(prompts), next(model.parameters()).device
        u = None if greedy else draw_uniforms(gen.max_new_tokens, P * k, device)  # (T, B)
        lo, hi = (only.start, only.stop) if only is not None else (0, P)
        per = max(1, rows // k) if rows else hi - lo  # prompts per pass
        parts = [_sample(model, tok, prompts[s:min(s + per, hi)], enc["input_ids"][s:min(s + per, hi)],
                         enc["attention_mask"][s:min(s + per, hi)], k, gen, greedy,
                         None if u is None else u[:, s * k:min(s + per, hi) * k]) for s in range(lo, hi, per)]
        return parts[0] if len(parts) == 1 else concat_rollouts(parts, tok.pad_token_id)
    finally:
        model.train(was_training)


def _sample(model: Any, tok: Any, prompts: Sequence[str], ids: torch.Tensor, mask: torch.Tensor, k: int,
            gen: GenSettings, greedy: bool, uniforms: torch.Tensor | None) -> Rollout:
    """One pass: encode the P prompts once, decode their P·K rows.  ids, mask (P, Tp)."""
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    hidden = _inner(model).get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state  # (P, Tp, H)
    ids, mask = ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)  # (B, Tp)
    sampler, eos = TokenSampler(gen.temperature, gen.top_k, gen.top_p, greedy, uniforms), eos_ids(model, tok)
    comp = decode(model, hidden.repeat_interleave(k, 0), mask, sampler.choose, gen.max_new_tokens,
                  decoder_prefix(model), eos, tok.pad_token_id)  # (B, T)
    cmask = completion_mask(comp, eos, tok.pad_token_id)
    if gen.stop_strings:  # the completion alone is the decoder's text: the prompt is not part of it
        from .causal_lm import stop_check

        cmask = cmask * ~after_stop(comp[:, :0], comp, stop_check(tok, gen))
    comp = torch.where(cmask.bool(), comp, torch.full_like(comp, tok.pad_token_id))
    logp = sampler.stacked()[:, :comp.shape[1]] * cmask  # (B, T)
    return Rollout(ids, mask, comp, cmask, logp, [p for p in prompts for _ in range(k)],
                   tok.batch_decode(comp, skip_special_tokens=True))


def decode(model: Any, hidden: torch.Tensor, mask: torch.Tensor, choose: Callable[[torch.Tensor], torch.Tensor],
           max_new_tokens: int, prefix: Sequence[int], eos: Sequence[int], pad: int) -> torch.Tensor:
    """Tokens chosen one at a time by `choose` from the next-token logits, with the decoder's KV cache, after the
    decoder has read `prefix` (`decoder_prefix`), until every row has an EOS or `max_new_tokens`; a row that ended
    gets pad.  hidden (B, Tp, H), mask (B, Tp) → (B, T)."""
    from transformers.modeling_outputs import BaseModelOutput

    encoded, key, cache = BaseModelOutput(last_hidden_state=hidden), cache_keyword(model), None
    token = torch.tensor([list(prefix)], device=hidden.device).expand(hidden.shape[0], -1)  # (B, L)
    done = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)  # (B,)
    eos_t, out = torch.tensor(list(eos), device=hidden.device), []
    for _ in range(max_new_tokens):
        step = model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=token, use_cache=True,
                     **({key: cache} if cache is not None else {}))
        cache = getattr(step, key)
        nxt = choose(policy_logits(model, step.logits[:, -1]))  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        out.append(nxt)
        done |= torch.isin(nxt, eos_t)
        if bool(done.all()):
            break
        token = nxt[:, None]
    return torch.stack(out, dim=1)


def _forward(model: Any, ids: torch.Tensor, mask: torch.Tensor, n: int, share_prompt: bool,
             hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The logits (and, with `hidden`, the decoder's last hidden states) at the completion's T positions for the
    rollout rows `ids` (B, Tp + T): the encoder on the prompt (once per group of rows sharing one, when
    `share_prompt` and not under DDP, whose hooks expect one forward call), the decoder reading [prefix] +
    completion[:-1].  → (B, T, V), (B, T, H) or None."""
    out, L = _decoder_pass(model, ids, mask, n, share_prompt, hidden), len(decoder_prefix(model))
    return out.logits[:, L - 1:], out.decoder_hidden_states[-1][:, L - 1:] if hidden else None


def _decoder_pass(model: Any, ids: torch.Tensor, mask: torch.Tensor, n: int, share_prompt: bool, hidden: bool) -> Any:
    Tp = ids.shape[1] - n
    src, smask, comp = ids[:, :Tp], mask[:, :Tp], ids[:, Tp:]
    prefix = torch.tensor([decoder_prefix(model)], device=ids.device).expand(ids.shape[0], -1)  # (B, L)
    dec_in = torch.cat([prefix, comp[:, :-1]], dim=1)  # (B, L - 1 + T)
    kwargs = {"attention_mask": smask, "decoder_input_ids": dec_in, "use_cache": False, "output_hidden_states": hidden}
    first, group = prompt_groups(src, smask)
    if share_prompt and len(first) < len(group) and not hasattr(model, "module"):
        from transformers.modeling_outputs import BaseModelOutput

        states = _inner(model).get_encoder()(input_ids=src[first], attention_mask=smask[first]).last_hidden_state
        return model(encoder_outputs=BaseModelOutput(last_hidden_state=states[group]), **kwargs)  # (G, ·) → (B, ·)
    return model(input_ids=src, **kwargs)


def token_logprobs(model: Any, ids: torch.Tensor, mask: torch.Tensor, n_completion: int, temperature: float = 1.0,
                   entropy: bool = True, share_prompt: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(token) and (if `entropy`) its entropy (no gradient) of the last `n_completion` columns of `ids`, the
    completion.  ids (B, Tp + T) → (B, T), (B, T) or None."""
    logits = policy_logits(model, _forward(model, ids, mask, n_completion, share_prompt)[0].float())  # (B, T, V)
    return tempered_logprobs(logits, ids[:, -n_completion:], temperature, entropy)  # (B, T) each


def token_logprobs_at(model: Any, ids: torch.Tensor, mask: torch.Tensor, n_completion: int,
                      temperatures: Sequence[float], share_prompt: bool = True) -> list[torch.Tensor]:
    """log π(token) at each of `temperatures` from one pass of the model.  ids (B, Tp + T) → [(B, T)]."""
    logits = policy_logits(model, _forward(model, ids, mask, n_completion, share_prompt)[0].float())  # (B, T, V)
    labels = ids[:, -n_completion:]
    return [logprobs_from_logits(logits if t == 1.0 else logits / t, labels) for t in temperatures]


def token_outputs(model: Any, ids: torch.Tensor, mask: torch.Tensor, n: int,
                  temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log π, the decoder's last hidden state at each completion position (what a value head reads) and the entropy
    (no gradient), from one forward pass (one per row: PPO's shuffled minibatches).  → (B, T), (B, T, H), (B, T)."""
    logits, states = _forward(model, ids, mask, n, share_prompt=False, hidden=True)
    logits = policy_logits(model, logits.float()) / temperature  # (B, T, V)
    with torch.no_grad():
        ent = entropy_from_logits(logits)
    return logprobs_from_logits(logits, ids[:, -n:]), states, ent


def completion_hidden(model: Any, ids: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """The decoder's last hidden state at each completion position, as `token_outputs` gives it.  → (B, T, H)"""
    return _forward(model, ids, mask, n, share_prompt=True, hidden=True)[1]
