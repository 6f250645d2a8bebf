"""`rewardtune data recipe NAME`: write a generative recipe's prompt/completion rows (rewardtune/recipes.py)."""
from __future__ import annotations

import argparse
from typing import Any


def cmd_data_recipe(args: argparse.Namespace) -> None:
    from .recipes import write_recipe

    info = write_recipe(args.name, args.out, args.data_root, args.train_rows, args.val_rows, args.seed)
    print(f"recipe {info['recipe']}: {info['train']} train rows, {info['val']} val rows in {info['out']}")


def add_commands(data: Any) -> None:
    """Add `recipe` to the `data` command's subparsers."""
    from .recipes import DATA_ROOT, RECIPES

    names = "; ".join(f"{k}: {v[1]}" for k, v in RECIPES.items())
    p = data.add_parser("recipe", help="prompt/completion rows of a generative recipe from ../shared/data "
                                       "(read by the shipped configs recipe-NAME-sft and recipe-NAME-rl)")
    p.add_argument("name", choices=list(RECIPES), help=names)
    p.add_argument("--out", default="", help="folder for train.jsonl and val.jsonl (default runs/data/recipe-NAME)")
    p.add_argument("--data-root", default=DATA_ROOT, help="the task packs' folder")
    p.add_argument("--train-rows", type=int, default=0, help="a seeded subset of this many training rows (0 = all)")
    p.add_argument("--val-rows", type=int, default=0, help="a seeded subset of this many validation rows (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsets")
    p.set_defaults(func=cmd_data_recipe)
