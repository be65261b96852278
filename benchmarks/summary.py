"""``python -m benchmarks.summary``: the latest results (``benchmarks/results/*.json``) as a markdown table."""

from __future__ import annotations

import json

from .common import RESULTS_DIR


def main() -> None:
    print("| benchmark | headline | ratio | baseline | target | met | measured |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(RESULTS_DIR.glob("*.json")):
        record = json.loads(path.read_text())
        headline = record.get("headline")
        if not isinstance(headline, dict):
            continue
        print(f"| {record['benchmark']} | {headline['what']} | {headline['ratio']:.2f}x | {headline['baseline']} | "
              f"{headline['target']} | {'yes' if headline['met'] else 'no'} | {record['date']} |")


if __name__ == "__main__":
    main()
