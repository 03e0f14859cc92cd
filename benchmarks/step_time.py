"""Time of one training step, side by side, without `fit`'s per-epoch work.

    .venv/bin/python benchmarks/step_time.py            # 15 rounds of 60 steps

The variants of `speed.py` (same student, data, teachers), each timed over
60 calls of its compiled `train_function`, in rounds that alternate them
(each round starting one variant later). Prints medians in ms per step and
the ratios c/a, b/d and e_cached/a; writes benchmarks/step_time.json.
"""

import argparse
import json
import os
import statistics
import time

import keras

from _common import spread
from speed import setup

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ("a", "b", "c", "d", "e_cached")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--output", default=os.path.join(HERE, "step_time.json"))
    args = parser.parse_args()

    variants = {k: v for k, v in setup()[2].items() if k in NAMES}
    iterators = {}
    for name, (model, data) in variants.items():
        model.fit(**data, epochs=1, verbose=0)  # builds and traces train_function
        iterators[name] = iter(data["x"].repeat())

    times = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            step, it = variants[name][0].train_function, iterators[name]
            start = time.perf_counter()
            for _ in range(args.steps):
                logs = step(it)
            keras.tree.map_structure(keras.ops.convert_to_numpy, logs)  # wait
            times[name].append(1000 * (time.perf_counter() - start) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {"c/a": med["c"] / med["a"], "b/d": med["b"] / med["d"],
              "e_cached/a": med["e_cached"] / med["a"]}
    with open(args.output, "w") as f:
        json.dump({"command": f"python benchmarks/step_time.py --rounds {args.rounds} "
                              f"--steps {args.steps}",
                   "load_average_after": os.getloadavg(),
                   "ms_per_step": {k: spread(v) for k, v in times.items()},
                   "ratios_of_medians": ratios}, f, indent=2)
    for k in names:
        print(f"  {k:<9}{med[k]:7.3f} ms/step  ({min(times[k]):.3f}-{max(times[k]):.3f})")
    print("  " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
