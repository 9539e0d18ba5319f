"""`make bench`: every benchmark, each against a peer measured in the same run."""
from __future__ import annotations

import json

from bench import (
    attention,
    decode,
    engine,
    hashing,
    ingest,
    materialize,
    noop,
    noop_scaling,
    quantize,
    remote,
    schedule,
)
from bench.common import WORK, write_json


def main() -> None:
    results = {
        "noop": noop.main(),
        "noop_scaling": noop_scaling.main(),
        "hashing": hashing.main(),
        "quantize": quantize.main(),
        "materialize": materialize.main(),
        "remote": remote.main(),
        "engine": engine.main([]),
        "ingest": ingest.main(),
        "schedule": schedule.main(),
        "attention": attention.main([]),
        "decode": decode.main([]),
    }
    write_json(WORK / "results.json", results)
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
