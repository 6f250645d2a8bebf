"""Learning from logged bandit feedback on converted text classification (AG News, Banking77).

Supervised-to-bandit conversion (Swaminathan & Joachims 2015) of a seeded subset of a labelled set: a weak logging
policy (a linear softmax classifier fitted on a few labelled rows) samples one label per text from its own
probabilities (softmax exploration, temperature `--temperature`); reward 1 for the right label; propensity logged.
From that log alone, a policy is learned with each off-policy objective of algorithms/ope.py (IPS, SNIPS, DR,
BanditNet), its best epoch picked by the greedy policy's SNIPS estimate on 10% of the log (no labels), and compared
with the logging policy and with full-information supervised training (`sft`, cross-entropy on the true labels of
the same texts). Each learned policy's IPS/SNIPS/DR estimate on a held-out log (the logger run on held-out texts,
DR's reward model cross-fitted as `rewardtune ope` does) is checked against its true held-out accuracy.

Sized for a shared 2-core CPU: the policies are linear softmax heads over frozen MiniLM-L6 mean-pooled features
(computed once per data set and cached in --cache), because fine-tuning MiniLM for ten runs per data set does not fit
(8-16 s per batch of 32 under the shared load, measured).

`--e2e` instead runs the product's command path, each step a `rewardtune` process as a user runs it: `sft` of the
weak logging policy (MiniLM's head on a few labels), `bandit convert` of the texts to log and of held-out texts,
`bandit train` from the logger's checkpoint (one run per estimator, and full-information `sft` from it), `ope` of each
learned checkpoint on the held-out log. The policies train their head over a frozen MiniLM whose outputs are computed
once (`train.freeze_encoder=true train.cache_encoder=true`), which makes 20 epochs fit the CPU.

    .venv/bin/python benchmarks/bandit_text.py --task agnews
    .venv/bin/python benchmarks/bandit_text.py --task banking77
    .venv/bin/python benchmarks/bandit_text.py --task agnews --e2e --temperature 1
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from record import record
from rewardtune.algorithms.ope import OFF_POLICY_LOSSES, LoggedBatch
from rewardtune.bandit.convert import logging_accuracy, sample_log, softmax_exploration, write_log
from rewardtune.bandit.direct import cross_fit, embed, fit_reward_table
from rewardtune.bandit.evaluate import estimates, greedy_policy
from rewardtune.bandit.log import BanditLog
from rewardtune.data import load_examples

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HEAD = ["train.freeze_encoder=true", "train.cache_encoder=true"]  # the head alone, over a frozen MiniLM
TASKS = {"agnews": ("topic/agnews/train.jsonl.gz", 100), "banking77": ("intent/banking77/train.jsonl.gz", 385)}


def features(task: str, texts: list[str], cache: Path, max_length: int, seed: int) -> torch.Tensor:
    """MiniLM-L6 mean-pooled features (N, 384), standardised, cached per task, size and seed (which rows)."""
    path = cache / f"{task}-{len(texts)}-{max_length}-seed{seed}.pt"
    if not path.exists():
        from rewardtune.models import load_classifier

        model, tok = load_classifier("minilm-l6", 2)
        torch.set_num_threads(2)
        t = time.time()
        feats = embed(model, tok, texts, max_length, batch_size=64).float()
        print(f"embedded {len(texts)} texts in {time.time() - t:.0f} s", flush=True)
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(feats, path)
    feats = torch.load(path)
    return (feats - feats.mean(0)) / feats.std(0).clamp_min(1e-6)


def fit_linear(x: torch.Tensor, n_actions: int, loss_fn, epochs: int, seed: int, select=None, lr: float = 1e-2,
               batch: int = 64, wd: float = 1e-4, start: torch.nn.Linear | None = None) -> torch.nn.Linear:
    """A linear softmax policy trained by minibatch Adam on loss_fn(logits, rows), from `start`'s weights or from
    zero (uniform); the best select(policy) over the epochs (and a warm start) is kept (without `select`: the last
    epoch)."""
    torch.manual_seed(seed)
    lin = torch.nn.Linear(x.shape[1], n_actions)
    torch.nn.init.zeros_(lin.weight), torch.nn.init.zeros_(lin.bias)
    if start is not None:
        lin.load_state_dict(start.state_dict())
    opt = torch.optim.Adam(lin.parameters(), lr=lr, weight_decay=wd)
    # a warm start is a candidate itself (learning may not beat it); a zero start is not: its greedy policy is one
    # tie-broken action, whose SNIPS rests on the few rows that logged it (1.0 if those few were rewarded)
    best, best_state = ((select(lin), {k: v.clone() for k, v in lin.state_dict().items()}) if select and start
                        else (0.0, None))
    for _ in range(epochs):
        for rows in torch.randperm(len(x)).split(batch):
            loss = loss_fn(lin(x[rows]), rows)
            opt.zero_grad()
            loss.backward()
            opt.step()
        score = select(lin) if select else 0.0
        if best_state is None or score > best or not select:
            best, best_state = score, {k: v.clone() for k, v in lin.state_dict().items()}
    lin.load_state_dict(best_state)
    return lin


def probs_of(lin: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(lin(x), -1).double()


def make_log(texts, mu, labels, seed, names) -> BanditLog:
    actions, prop, reward = sample_log(mu, labels, seed)
    return BanditLog(list(texts), actions, reward, prop, names)


def ope_rows(log: BanditLog, x: torch.Tensor, pi: torch.Tensor, q_hat: torch.Tensor | None):
    from rewardtune.bandit.evaluate import off_policy_data

    return estimates(off_policy_data(log, pi, q_hat), ["ips", "snips"] + (["dr"] if q_hat is not None else []))


def learners(x, log: BanditLog, y_true, n_actions, val_rows, train_rows, q_train, epochs, seed, start, lr):
    """name → fitted linear policy: each off-policy objective on the log, and sft on the true labels."""
    xt = x[train_rows]
    t_log = log_subset(log, train_rows)
    baseline = t_log.rewards.mean().item()
    v_log, xv = log_subset(log, val_rows), x[val_rows]

    def snips_val(lin):  # the greedy policy's SNIPS on the validation part of the log: no labels used
        return ope_rows(v_log, xv, greedy_policy(probs_of(lin, xv)), None)["snips"]["value"]

    out = {}
    for name, fn in OFF_POLICY_LOSSES.items():
        def loss(logits, rows, fn=fn):
            b = LoggedBatch(logits, t_log.actions[rows], t_log.rewards[rows].float(), t_log.propensities[rows].float(),
                            q_train[rows].float() if name == "dr" else None)
            return fn(b, 0.0, baseline)[0]
        t = time.time()
        out[name] = fit_linear(xt, n_actions, loss, epochs, seed, snips_val, lr=lr, start=start)
        print(f"  {name}: {time.time() - t:.1f} s", flush=True)
    yt, yv = y_true[train_rows], y_true[val_rows]
    out["sft"] = fit_linear(xt, n_actions, lambda lg, rows: torch.nn.functional.cross_entropy(lg, yt[rows]), epochs,
                            seed, lambda lin: (probs_of(lin, xv).argmax(-1) == yv).double().mean().item(), lr=lr,
                            start=start)
    return out


def log_subset(log: BanditLog, rows: torch.Tensor) -> BanditLog:
    return log.subset(rows.tolist())


def run_task(args) -> None:
    path, n_logger = TASKS[args.task]
    ex = load_examples(DATA / path)
    order = torch.randperm(len(ex), generator=torch.Generator().manual_seed(args.seed)).tolist()
    idx_logger, idx_log = order[:n_logger], order[n_logger:n_logger + args.log_rows]
    idx_test = order[n_logger + args.log_rows:n_logger + args.log_rows + args.test_rows]
    sub = ex.subset(idx_logger + idx_log + idx_test)
    x = features(args.task, sub.texts, Path(args.cache), args.max_length, args.seed)
    y = torch.tensor(sub.labels)
    n_a, names = len(ex.label_names), ex.label_names
    xl, xg, xh = x[:n_logger], x[n_logger:n_logger + args.log_rows], x[n_logger + args.log_rows:]
    yl, yg, yh = y[:n_logger], y[n_logger:n_logger + args.log_rows], y[n_logger + args.log_rows:]
    # the weak logging policy: a linear softmax classifier on the few labelled rows (full batch, 100 epochs)
    logger = fit_linear(xl, n_a, lambda lg, rows: torch.nn.functional.cross_entropy(lg, yl[rows]),
                        args.logger_epochs, args.seed, batch=len(xl), wd=1e-3)
    mu_log, mu_test = (softmax_exploration(probs_of(logger, xx), args.temperature) for xx in (xg, xh))
    log = make_log(sub.texts[n_logger:n_logger + args.log_rows], mu_log, yg.tolist(), args.seed, names)
    heldout = make_log(sub.texts[n_logger + args.log_rows:], mu_test, yh.tolist(), args.seed + 1, names)
    perm = torch.randperm(len(log), generator=torch.Generator().manual_seed(args.seed))
    val_rows, train_rows = perm[:len(log) // 10], perm[len(log) // 10:]
    q_train = fit_reward_table(xg[train_rows].double(), log.actions[train_rows], log.rewards[train_rows], n_a,
                               args.dr_l2).predict(xg.double())[train_rows]
    acc_logger = logging_accuracy(mu_test, yh.tolist())
    print(f"{args.task}: {n_a} actions; logger on {n_logger} labelled rows; log {len(log)} rows (mean reward "
          f"{log.rewards.mean():.4f}, min propensity {log.propensities.min():.2e}); held-out {len(heldout)} rows")
    print(f"logging policy on held-out texts: expected accuracy {acc_logger['logging_expected_accuracy']:.4f}, "
          f"greedy {acc_logger['logging_greedy_accuracy']:.4f}")
    base = {"bench": "bandit_text", "task": args.task, "log_rows": len(log), "test_rows": len(heldout),
            "logger_rows": n_logger, "temperature": args.temperature, "seed": args.seed, "start": args.start, "lr": args.lr,
            "logger_epochs": args.logger_epochs,
            **acc_logger}
    q_heldout = cross_fit(xh.double(), heldout.actions, heldout.rewards, n_a, args.dr_l2, seed=args.seed)
    pols = learners(xg, log, yg, n_a, val_rows, train_rows, q_train, args.epochs, args.seed,
                    logger if args.start == "logger" else None, args.lr)
    print(f"{'policy':10} {'accuracy':>8}   " + "   ".join(f"{e:>26}" for e in ("IPS", "SNIPS", "DR")))
    for name, lin in pols.items():
        pi = greedy_policy(probs_of(lin, xh))
        acc = (pi.argmax(-1) == yh).double().mean().item()
        est = ope_rows(heldout, xh, pi, q_heldout)
        cells = [f"{est[e]['value']:.4f} [{est[e]['low']:.4f}, {est[e]['high']:.4f}]"
                 + ("*" if est[e]["low"] <= acc <= est[e]["high"] else " ") for e in ("ips", "snips", "dr")]
        print(f"{name:10} {acc:8.4f}   " + "   ".join(f"{c:>26}" for c in cells))
        record({**base, "policy": name, "accuracy": acc, "ope": {k: v for k, v in est.items()}}, echo=False)
    print("* = the true held-out accuracy lies inside the 95% interval")


def rewardtune(*args: object) -> tuple[str, float]:
    """One `rewardtune` command, run as a user runs it (a new process); its standard output (echoed) and seconds."""
    print("$ rewardtune " + " ".join(map(str, args)), flush=True)
    t = time.time()
    out = subprocess.run([sys.executable, "-m", "rewardtune.cli", *map(str, args)], stdout=subprocess.PIPE,
                         text=True, check=True).stdout
    print(out, flush=True)
    return out, time.time() - t


def last_json(out: str) -> dict:
    """The JSON object a command prints last (`sft`, `bandit train`, `bandit convert`, `ope --json`)."""
    return json.loads(out[out.rindex("\n{") + 1:] if not out.startswith("{") else out)


def e2e_files(args, out: Path) -> dict[str, Path]:
    """Labelled files cut from a seeded shuffle of the task's set: the logger's few rows (as many as the linear
    benchmark's), the texts to log, held-out texts."""
    path, n_logger = TASKS[args.task]
    ex = load_examples(DATA / path)
    order = torch.randperm(len(ex), generator=torch.Generator().manual_seed(args.seed)).tolist()
    order = every_label_in_the_first(order, ex.labels, n_logger)
    sizes = {"logger": n_logger, "texts": args.e2e_rows, "heldout": args.e2e_test}
    files, at = {}, 0
    for name, n in sizes.items():
        files[name] = out / f"{name}.jsonl"
        with open(files[name], "w") as fh:
            fh.writelines(json.dumps({"text": ex.texts[i], "label": ex.label_names[ex.labels[i]]}) + "\n"
                          for i in order[at:at + n])
        at += n
    return files


def every_label_in_the_first(order: list[int], labels: list[int], n: int) -> list[int]:
    """`order` with, for each label missing from its first n rows, the label's first later row moved to the front:
    the logging policy must know every action (`bandit convert` refuses a text whose label it lacks). Where no label
    is missing (seeds 0 and 1 of both tasks) the order is unchanged."""
    seen, moved = {labels[i] for i in order[:n]}, []
    for i in order[n:]:
        if labels[i] not in seen:
            seen.add(labels[i])
            moved.append(i)
    if not moved:
        return order
    taken = set(moved)
    return moved + [i for i in order if i not in taken]


def run_e2e(args) -> None:
    """The command path, exactly as a user runs it: `sft` (a weak logging policy on a few labels) →
    `bandit convert` (a log of its choices, and a held-out log) → `bandit train` from the logger's checkpoint →
    `ope` of the learned checkpoint on the held-out log, against its true accuracy on the held-out labels."""
    out = Path(args.cache) / f"e2e-{args.task}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    files, runs = e2e_files(args, out), out / "runs"
    _, logger_s = rewardtune("sft", "model.name=minilm-l6", f"data.path={files['logger']}", "data.val_fraction=0.2",
                             f"runs_dir={runs}", "name=logger", f"train.max_length={args.max_length}",
                             *args.e2e_logger)
    logger = runs / "logger" / "checkpoints" / "best"
    logs = {}
    for i, name in enumerate(("texts", "heldout")):
        conv, _ = rewardtune("bandit", "convert", logger, "--data", files[name], "--out", out / f"{name}_log.jsonl",
                             "--temperature", args.temperature, "--seed", args.seed + i)
        logs[name] = last_json(conv)
    base = {"bench": "bandit_text_e2e", "task": args.task, "seed": args.seed, "logger_rows": TASKS[args.task][1], "rows": args.e2e_rows,
            "test_rows": args.e2e_test, "temperature": args.temperature, "logger_s": logger_s,
            "logger_args": args.e2e_logger, **{k: v for k, v in logs["heldout"].items() if k.startswith("logging_")}}
    for spec in args.e2e_runs:
        name, settings = spec.split(":", 1) if ":" in spec else (spec, "")
        cmd = ["sft", f"data.path={files['texts']}", "data.val_fraction=0.1"] if name == "sft" else [
            "bandit", "train", f"data.path={out / 'texts_log.jsonl'}", f"bandit.estimator={name}"]
        res, secs = rewardtune(*cmd, f"model.name={logger}", f"data.test_path={files['heldout']}",
                               f"train.max_length={args.max_length}", f"runs_dir={runs}", f"name={name}",
                               *settings.split())
        res = last_json(res)
        rep, _ = rewardtune("ope", runs / name / "checkpoints" / "best", "--log", out / "heldout_log.jsonl", "--json")
        rep = last_json(rep)
        truth = res["test"]["accuracy"]
        print(f"{name} ({settings}): held-out accuracy {truth:.4f}; logging policy expected "
              f"{base['logging_expected_accuracy']:.4f}, greedy {base['logging_greedy_accuracy']:.4f}")
        w = rep["estimates"]["_weights"]
        print(f"  weights: mean {w['mean']:.3f}, max {w['max']:.1f}, effective sample size {w['ess']:.0f} of {w['n']:.0f}")
        for e, v in ((e, v) for e, v in rep["estimates"].items() if not e.startswith("_")):
            print(f"  {e}: {v['value']:.4f} [{v['low']:.4f}, {v['high']:.4f}]"
                  + ("  holds the truth" if v["low"] <= truth <= v["high"] else "  MISSES the truth"))
        record({**base, "policy": name, "settings": settings, "accuracy": truth, "ope": rep["estimates"],
                "wall_s": secs, "train_s": res["train_s"], "steps": res["steps"]}, echo=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=list(TASKS), default="agnews")
    ap.add_argument("--log-rows", type=int, default=3000)
    ap.add_argument("--test-rows", type=int, default=1000)
    ap.add_argument("--temperature", type=float, default=2.0, help="logging policy: μ ∝ p^(1/τ)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate of the learned policies")
    ap.add_argument("--logger-epochs", type=int, default=100, help="full-batch epochs of the logging classifier")
    ap.add_argument("--start", choices=["logger", "zero"], default="logger",
                    help="learned policies (and sft) start from the logging policy's weights, or from zero (uniform)")
    ap.add_argument("--dr-l2", type=float, default=10.0)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the embedding pass and `--e2e` use more)")
    ap.add_argument("--cache", default="/tmp/rewardtune-bandit-bench")
    ap.add_argument("--e2e", action="store_true", help="instead: the command path (sft → bandit convert → "
                                                       "bandit train → ope)")
    ap.add_argument("--e2e-logger", nargs="*", default=["train.epochs=30", "train.batch_size=16", "train.lr=1e-2"] + HEAD,
                    help="the logging policy's `sft` settings")
    ap.add_argument("--e2e-rows", type=int, default=2000, help="texts logged (`bandit train` holds out 10%%)")
    ap.add_argument("--e2e-test", type=int, default=1000, help="held-out texts (labelled, and logged for `ope`)")
    ap.add_argument("--e2e-runs", nargs="*", default=[f"{e}:{' '.join(HEAD)} train.epochs=20 train.lr=1e-2"
                                                      for e in ("banditnet", "ips", "sft")],
                    help="ESTIMATOR[:SETTINGS] per `bandit train` run from the logger (`sft:...`: full information)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # the linear heads are tiny: extra threads only wait on each other
    run_e2e(args) if args.e2e else run_task(args)


if __name__ == "__main__":
    main()
