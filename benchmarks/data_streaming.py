"""Peak Python memory of loading a line-based file: held whole (read_table, then to_examples) vs streamed
(load_examples). 4,000 rows with a 2 kB column no one uses; tracemalloc's peak. Usage: python benchmarks/data_streaming.py"""
from __future__ import annotations

import json
import tempfile
import tracemalloc
from pathlib import Path

from rewardtune.data import load_examples, read_table, to_examples


def peak_mb(load) -> float:
    tracemalloc.start()
    load()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 1e6


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    junk = "x" * 2000
    jsonl, csv = folder / "big.jsonl", folder / "big.csv"
    jsonl.write_text("".join(json.dumps({"text": f"t {i}", "label": i % 2, "junk": junk}) + "\n" for i in range(4000)))
    csv.write_text("text,label,junk\n" + "".join(f"t {i},{i % 2},{junk}\n" for i in range(4000)))
    for path in (jsonl, csv):
        whole = peak_mb(lambda: to_examples(read_table(path)))
        streamed = peak_mb(lambda: load_examples(path))
        print(f"{path.suffix}: held whole {whole:.1f} MB, streamed {streamed:.1f} MB")


if __name__ == "__main__":
    main()
