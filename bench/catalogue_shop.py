"""A model trained on the generated two-type shop (``omnikern data shop``) against zero-shot MiniLM.

Writes the shop dataset, trains the catalogue model on it with the demo's CPU preset (MiniLM, top
layer frozen, 128 pairs per step), evaluates Recall@10/100 and MRR per task with bootstrap 95%
intervals (and the paired interval of the gain over zero-shot), and writes
``bench/results/catalogue_shop_cpu.json``::

    python bench/catalogue_shop.py [--steps 400] [--products 2000] [--boards 500] [--out DIR]

"The trained model beats zero-shot on a task by more than the bootstrap interval" is read two ways
and both are reported: the paired interval of the gain lies above 0, and the trained interval's
lower end lies above the zero-shot interval's upper end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# bench/kernels.py would shadow the `kernels` package that transformers imports.
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != BENCH_DIR]

import torch  # noqa: E402

from omnikern.catalogue import catalogue_trainer, evaluate_catalogue, format_catalogue_results  # noqa: E402
from omnikern.data.shop import write_shop  # noqa: E402
from omnikern.demo import demo_config  # noqa: E402
from omnikern.models.config import apply_overrides  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "catalogue_shop_cpu.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--boards", type=int, default=500)
    parser.add_argument("--train-pairs", type=int, default=20000)
    parser.add_argument("--eval-pairs", type=int, default=2000)
    parser.add_argument("--out", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="omnikern-shop-"))
    start = time.perf_counter()
    data = write_shop(work / "data", num_products=args.products, num_boards=args.boards,
                      num_train=args.train_pairs, num_eval=args.eval_pairs)
    config = apply_overrides(demo_config(steps=args.steps), [f'data.path="{data}"'])
    trainer = catalogue_trainer(config, work / "run")
    trainer.train()
    trained_s = time.perf_counter() - start
    results = evaluate_catalogue(trainer.model, config, trainer.data, progress=True)
    print(format_catalogue_results(results))
    verdicts = {}
    for task, entry in results["tasks"].items():
        gain = entry["trained_minus_zero_shot"]
        verdicts[task] = {"gain": gain["recall@10"], "gain_ci": gain["recall@10_ci"],
                          "paired_interval_above_0": gain["recall@10_ci"][0] > 0,
                          "intervals_disjoint": entry["trained"]["recall@10_ci"][0] > entry["zero_shot"]["recall@10_ci"][1]}
        print(f"{task}: Recall@10 gain over zero-shot {gain['recall@10']:+.3f} "
              f"[{gain['recall@10_ci'][0]:+.3f}, {gain['recall@10_ci'][1]:+.3f}]; {verdicts[task]}")
    record = {
        "date": datetime.date.today().isoformat(),
        "command": "python bench/catalogue_shop.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "dataset": trainer.data.dataset.report,
        "config": config.to_dict(),
        "train_seconds": round(trained_s, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "results": results,
        "verdicts": verdicts,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
