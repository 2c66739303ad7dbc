"""Persistent state between scheduled runs: versions, HEAD, and refused concurrent updates."""

from __future__ import annotations

import threading

import pytest

from activedet import store
from activedet.errors import ConcurrentUpdateError
from activedet.ops.state import Champion, State, StateStore


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "ops")
    return store.join(request.getfixturevalue("s3_bucket"), "ops")


def test_empty_state(root):
    st = StateStore(root)
    assert st.latest_version() == 0
    assert st.read() == State()


def test_commit_and_read_back(root):
    st = StateStore(root)
    s1 = st.commit(State(dataset_uri="d1", ledger_uri="l1"))
    assert s1.version == 1
    champ = Champion(model_name="m", version="3", checkpoint_uri="ck", metric="AP", value=0.4)
    s2 = st.commit(s1.model_copy(update={"cycle": 1, "champion": champ, "lineage": [{"cycle": 1}]}))
    assert s2.version == 2
    back = st.read()
    assert back.version == 2 and back.champion == champ and back.lineage == [{"cycle": 1}]
    assert st.read(1).dataset_uri == "d1" and st.read(1).champion is None
    assert [s.version for s in st.history()] == [1, 2]


def test_overlapping_runs_loser_is_refused(root):
    st = StateStore(root)
    base = st.commit(State(cycle=0))
    run_a = st.read()
    run_b = st.read()  # both start from version 1
    st.commit(run_a.model_copy(update={"cycle": 1, "ledger_uri": "from-a"}))
    with pytest.raises(ConcurrentUpdateError, match="another run committed version 2 after this run read version 1"):
        st.commit(run_b.model_copy(update={"cycle": 1, "ledger_uri": "from-b"}))
    assert st.read().ledger_uri == "from-a"  # the winner's state is intact
    assert st.latest_version() == 2
    assert base.version == 1


def test_many_concurrent_commits_exactly_one_wins(root):
    st = StateStore(root)
    st.commit(State())
    start = st.read()
    results: list[str] = []
    barrier = threading.Barrier(6)

    def run(i: int) -> None:
        barrier.wait()
        try:
            st.commit(start.model_copy(update={"run_id": f"r{i}"}))
            results.append(f"r{i}")
        except ConcurrentUpdateError:
            results.append("lost")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r != "lost"]
    assert len(winners) == 1 and len(results) == 6
    assert st.read().run_id == winners[0]


def test_head_lagging_behind_is_followed(root):
    st = StateStore(root)
    st.commit(State(cycle=1))
    st.commit(State(version=1, cycle=2))
    store.write_json(store.join(root, "state/HEAD.json"), {"version": 1})  # a run died before moving HEAD
    assert st.read().cycle == 2
    with pytest.raises(ConcurrentUpdateError):
        st.commit(State(version=1, cycle=3))
