"""`rewardtune export RUN_DIR --out DIR [--merge] [--push-to-hub ID]` (the work is in export.py)."""
from __future__ import annotations

import argparse
from typing import Any


def cmd_export(args: argparse.Namespace) -> None:
    from .export import check_push, export_run, push

    if args.push_to_hub:
        check_push(args.push_to_hub)  # at once, before the export's work
    out = export_run(args.run_dir, args.out, merge=args.merge, which=args.checkpoint)
    print(f"exported {args.run_dir} to {out} (model card: {out / 'README.md'})")
    if args.push_to_hub:
        print(f"pushed to {push(out, args.push_to_hub, args.private)}")


def add_commands(sub: Any) -> None:
    p = sub.add_parser("export", help="a run's trained model as a folder transformers/peft load with from_pretrained, "
                                      "with a model card; optionally pushed to the hub")
    p.add_argument("run_dir", help="a run folder (runs/NAME) or one of its checkpoint folders")
    p.add_argument("--out", required=True, help="folder to write (must not exist, or be empty)")
    p.add_argument("--merge", action="store_true", help="fold a LoRA adapter into its base weights: a plain "
                                                        "transformers model (default: the adapter, for peft)")
    p.add_argument("--checkpoint", default="best", choices=["best", "final"],
                   help="which of the run's checkpoints (default best; a classifier run keeps best only)")
    p.add_argument("--push-to-hub", metavar="ID", default="", help="also upload to this hub repo (user/name)")
    p.add_argument("--private", action="store_true", help="create the hub repo private")
    p.set_defaults(func=cmd_export)
