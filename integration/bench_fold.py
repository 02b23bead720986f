"""The CPU of a cold start without I/O: fold a listing into the state, then translate it.

The benchmark registry of ``bench_scale`` (services x endpoints, one HTTP listener), listed
in pages of 10,000 keys as the etcd adapter delivers them, is folded into a fresh
``RegistryState`` and translated by a fresh ``Translator``. Prints seconds for each (memos
are per process: run it a few times and take the least).

Seconds on a shared VM move by more than the changes worth measuring. For comparisons,
count instructions instead, which repeat to within 0.1% here::

    python -m integration.bench_fold --services 300 --stop build   # then --stop fold, all
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m integration.bench_fold \\
        --services 300 --stop fold

The difference between ``--stop fold`` and ``--stop build`` is the fold, between ``all`` and
``fold`` the translation (run it once without valgrind first, so modules are compiled).
"""

from __future__ import annotations

import argparse
import gc
import json
import time

from integration.bench_scale import registry_entries
from xds_server.ingest.registry import Entry, Reset
from xds_server.ingest.state import RegistryState
from xds_server.translate.translator import Translator

PAGE = 10_000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--endpoints", type=int, default=10)
    p.add_argument("--stop", choices=("build", "fold", "all"), default="all")
    args = p.parse_args()
    listed = sorted(
        ("/mesh/" + key, json.dumps(value).encode())
        for key, value in registry_entries(args.services, args.endpoints)
    )
    entries = tuple(Entry(key, value, 5) for key, value in listed)
    pages = [entries[i : i + PAGE] for i in range(0, len(entries), PAGE)]
    if args.stop == "build":
        return
    gc.disable()  # as meshd does for a big batch
    try:
        _fold_and_translate(pages, len(entries), args.stop)
    finally:
        gc.enable()  # (a test runs this inside pytest's process)


def _fold_and_translate(pages: list[tuple[Entry, ...]], entries: int, stop: str) -> None:
    state = RegistryState()
    started = time.perf_counter()
    changes = None
    for n, page in enumerate(pages):
        changes = state.apply(Reset(10, page, n, more=n < len(pages) - 1))
    folded = time.perf_counter()
    assert changes is not None
    print(f"fold: {entries} entries in {len(pages)} pages, {folded - started:.3f} s")
    if stop == "fold":
        return
    delta = Translator().update(state, changes)
    translated = time.perf_counter()
    print(f"translate: {delta.count()} resources, {translated - folded:.3f} s")


if __name__ == "__main__":
    main()
