"""``--search random``: the baseline PBT is compared with. Same population, same intervals,
but nobody copies anybody and every member keeps its first hyperparameters."""

from __future__ import annotations

from conftest import QUAD, run_popbt
from popbt.store import DONE, open_store


def test_random_search_never_exploits_and_keeps_each_members_hyperparameters(tmp_path, sqlite_url):
    out = run_popbt(
        "run",
        QUAD,
        "--search",
        "random",
        "--workers",
        "1",
        "--seed",
        "5",
        "--storage",
        sqlite_url,
        "--dir",
        str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    store = open_store(sqlite_url)
    try:
        exp = store.experiment("quad")
        rows, exploits = store.history(exp.id), store.exploits(exp.id)
    finally:
        store.close()
    assert exp.config.search == "random" and exp.status == "finished"
    assert exploits == []
    assert sorted((r.member, r.interval) for r in rows if r.state == DONE) == [
        (m, k) for m in range(4) for k in range(6)
    ]
    first = {r.member: r.hparams for r in rows if r.interval == 0}
    for r in rows:
        assert r.hparams == first[r.member], (r.member, r.interval)
        if r.interval > 0:
            assert (r.parent, r.parent_interval) == (r.member, r.interval - 1)
