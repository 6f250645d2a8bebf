"""Every trainer and its main variants, each run once under torchrun with 2 CPU processes (gloo), on tiny random
models: a smoke matrix for the multi-process paths, kept out of the test suite for time (≈9 s a launch on 2
cores: ≈3 min for the 21, ≈3 min for --resume).

    .venv/bin/python scripts/smoke_processes.py              # 21 configurations: does each run to the end?
    .venv/bin/python scripts/smoke_processes.py --resume     # 7: stopped after step 1 and resumed = one straight run?
    .venv/bin/python scripts/smoke_processes.py -k ppo       # only the configurations whose line holds "ppo"

With --resume each configuration runs straight, then stopped after its first step (ckpt.stop_after=1) and resumed
(ckpt.resume=auto); the two newest checkpoints' weights must be equal and so must the metrics rows (timings aside).
The work folder (models, data, runs, one log per launch) is kept for reading: --work, default a temporary folder.
Exit status 1 when any configuration failed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLS = "model.name={w}/bert data.path={w}/reviews.jsonl train.batch_size=8 train.epochs=1 train.max_length=24 " \
      "train.log_every=1 data.val_fraction=0.25"
RM = "model.name={w}/bert train.batch_size=8 train.epochs=1 train.max_length=24"
GEN = "policy=causal-lm model.name={w}/llama model.lora.r=4 data.path={w}/prompts.jsonl rl.prompts_per_step=4 " \
      "rl.samples_per_prompt=2 rl.steps=3 eval.prompts=2 eval.every=2 gen.max_new_tokens=4"
RUN = [  # (resume check?, command line)
    (True, f"sft {CLS} train.max_steps=3"),
    (False, f"rl {CLS} rl.estimator=reinforce rl.baseline=rloo"),
    (False, f"rl {CLS} rl.estimator=reinforce rl.baseline=none"),
    (True, f"rl {CLS} rl.estimator=reinforce rl.baseline=ema rl.kl_coef=0.1 train.max_steps=3"),
    (False, f"rl {CLS} rl.estimator=value rl.exploration=epsilon"),
    (False, f"rl {CLS} rl.estimator=value rl.exploration=softmax"),
    (False, f"rl {CLS} rl.estimator=expected model.lora.r=4"),
    (False, f"rm train {RM} data.path={{w}}/reviews.jsonl rm.mode=pointwise"),
    (False, f"rm train {RM} data.path={{w}}/scores.jsonl data.label_column= rm.mode=regression"),
    (True, f"rm train {RM} data.path={{w}}/pairs.jsonl rm.mode=pairwise train.max_steps=3"),
    (True, f"rl {GEN} rl.algorithm=grpo"),
    (False, f"rl {GEN} rl.algorithm=dr_grpo runtime.micro_batch_size=1"),
    (False, f"rl {GEN} rl.algorithm=rloo rl.kl_mode=reward rl.kl_estimator=k2"),
    (True, f"rl {GEN} rl.algorithm=reinforce rl.baseline=ema reward.normalize=running rl.kl_target=0.05"),
    (False, f"rl {GEN} rl.algorithm=reinforce rl.baseline=mean reward.normalize=rank"),
    (True, f"rl {GEN} rl.algorithm=ppo runtime.micro_batch_size=1"),
    (False, f"rl {GEN} rl.algorithm=ppo rl.kl_mode=loss eval.samples=2"),
    (True, f"rl {GEN} rl.algorithm=grpo model.lora.r=0 rl.kl_coef=0.1"),
    (False, f"rl {GEN} rl.algorithm=grpo runtime.inference_batch_size=2 eval.samples=2 eval.best_metric=kl eval.best_mode=min"),
    (False, f"rl {GEN} rl.algorithm=grpo reward.on_error=skip"),
    (False, f"rl {GEN} rl.algorithm=grpo runtime.gradient_checkpointing=true runtime.micro_batch_size=2"),
]
TIMING = ("time", "tokens_per_s", "train_s", "train_examples_per_s")
TIMEOUT_S = 300  # a launch that takes longer has hung (gloo waits 30 min)


def build(work: Path) -> None:
    """Tiny random BERT and Llama (tests/helpers' word-level tokenizer) and small data files."""
    sys.path.insert(0, str(REPO / "tests"))
    import torch
    from helpers import WORDS, make_tokenizer
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = make_tokenizer()
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
              ).save_pretrained(work / "bert")
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
                     ).save_pretrained(work / "llama")
    for name in ("bert", "llama"):
        tok.save_pretrained(work / name)
    rng = random.Random(0)
    text = lambda word: " ".join([rng.choice(WORDS) for _ in range(rng.randint(3, 14))] + [word])  # noqa: E731
    reviews = [{"text": text(rng.choice(["good", "great"] if i % 2 == 0 else ["bad", "dull"])),
                "label": "pos" if i % 2 == 0 else "neg"} for i in range(66)]
    files = {"reviews": reviews, "scores": [{"text": r["text"], "score": float(i % 5)} for i, r in enumerate(reviews)],
             "pairs": [{"prompt": rng.choice(WORDS), "chosen": text("good"), "rejected": text("bad")} for _ in range(66)],
             "prompts": [{"prompt": f"the film was {w}"} for w in WORDS[:14]]}
    for name, rows in files.items():
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def launch(work: Path, line: str, name: str, *extra: str) -> tuple[int, float]:
    """One torchrun launch of tests/ddp_worker.py (the unchanged CLI); → (exit status, seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "ddp_worker.py"), str(work / "info.json"), *line.format(w=work).split(),
           f"runs_dir={work / 'runs'}", f"name={name}", *extra]
    t = time.time()
    with open(work / f"log-{name}{'-'.join(('',) + extra)}.txt".replace("=", "_"), "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:  # a hang: the launcher and its workers (their own session) go
            os.killpg(proc.pid, 9)
            proc.wait()
            rc = -9
    return rc, time.time() - t


def same_run(a: Path, b: Path) -> str:
    """'' when the two runs' newest checkpoints hold equal weights and their metrics rows agree (timings aside)."""
    import torch
    from safetensors.torch import load_file

    from rewardtune.checkpoint import complete_checkpoints

    kept = complete_checkpoints(a / "checkpoints"), complete_checkpoints(b / "checkpoints")
    if not (kept[0] and kept[1]):
        return "no complete checkpoint"
    ca, cb = kept[0][-1], kept[1][-1]
    if ca.name != cb.name:
        return f"newest checkpoints {ca.name} vs {cb.name}"
    for f in sorted(ca.glob("*.safetensors")):
        x, y = load_file(f), load_file(cb / f.name)
        if not f.name.startswith("rng") and not all(torch.equal(x[k], y[k]) for k in x):
            return f"{f.name} differs"
    rows = lambda d: [{k: v for k, v in json.loads(line).items() if not k.startswith(TIMING)}  # noqa: E731
                      for line in (d / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return "" if rows(a) == rows(b) else "metrics rows differ"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resume", action="store_true", help="stop after step 1, resume, compare with a straight run")
    p.add_argument("-k", default="", help="only configurations whose command line holds this")
    p.add_argument("--work", default="", help="work folder (default: a new temporary one)")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="rewardtune-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    build(work)
    failed = 0
    for i, (check, line) in enumerate(RUN, 1):
        if args.k not in line or (args.resume and not check):
            continue
        name = f"c{i}"
        rc, s = launch(work, line, name)
        verdict = "ok" if rc == 0 else "hung, killed" if rc == -9 else f"exit {rc}"
        if args.resume and rc == 0:
            stopped, _ = launch(work, line, f"{name}-b", "ckpt.stop_after=1")
            resumed, _ = launch(work, line, f"{name}-b", "ckpt.resume=auto")
            diff = same_run(work / "runs" / name, work / "runs" / f"{name}-b") if stopped == resumed == 0 else \
                f"stop/resume exits {stopped}/{resumed}"
            verdict = diff or "ok, resumed = straight"
        failed += not verdict.startswith("ok")
        print(f"{name:4} {s:5.1f} s  {verdict:24} {line.format(w='W')}", flush=True)
    print(f"{failed} failed; logs and runs in {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
