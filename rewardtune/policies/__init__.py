"""Policies π(a|x): one module per kind of action, each providing the pieces a trainer needs.

The pieces are named in `protocol.PolicyKind`: sample actions with their log-probs, log-probs of given
actions, the reference policy's log-probs, the KL to it and the entropy, and what an action reads as for the
rewards. Trainers (rewardtune/train/) call these; estimators and losses (rewardtune/algorithms/) see only
tensors.

Kinds today:
  label classifier (`classifier.py`): the action is one label of a small set, π = softmax(logits); every
    piece is exact over the label set (`sample`, `logprobs`, `every_label` for E_π[R], `epsilon_greedy` and
    `boltzmann` for the value estimator, `reference_logprobs`, `kl`, `entropy`, `action_texts`).
  causal LM (`causal_lm.py`, with `decode.py`, `sampling.py`, `head.py`, `positions.py`): the action is a
    completion of tokens; `sample` decodes with the KV cache and records log π_old while decoding (a
    `Rollout`, whose `completions` are the action texts), `token_logprobs` gives log π per token (with its
    entropy), the reference's log-probs are `token_logprobs` under `train.common.setup_reference`, and the
    KL is estimated per token (`algorithms.kl`). Its names predate the protocol and do not yet match it.
  seq2seq (`seq2seq.py`): the action is an encoder-decoder's completion (T5, BART, Marian), with the causal LM's
    names and arguments. `families.py` holds the two generative kinds behind one seam (`LMFamily`, picked once by
    `policy`), which the generative trainers call.
Kinds next, each a module here satisfying `PolicyKind`: token tagger (a label per token), span extractor
(start and end positions).

The reference policy's set-up (`train.common.setup_reference`: a frozen copy, or the LoRA model with its
adapter off) is shared by every kind and stays with the trainers' set-up steps.
"""
