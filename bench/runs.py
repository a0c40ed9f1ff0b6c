"""What bench/table.py and bench/chart.py share: reading the runs that
scripts/bench.sh records (one JSON object per line) and finding a figure in
each of them."""
import json


def load(paths):
    """Each run's JSON lines, one list per file."""
    runs = []
    for path in paths:
        with open(path) as lines:
            runs.append([json.loads(line) for line in lines if line.startswith("{")])
    return runs


def first_matches(runs, server, match):
    """Per run, the first line of `server` whose fields match `match` (a
    value, or a test called on the field), skipping runs that have none."""
    for run in runs:
        for line in run:
            if line.get("server") == server and all(
                    v(line.get(k)) if callable(v) else line.get(k) == v for k, v in match.items()):
                yield line
                break
