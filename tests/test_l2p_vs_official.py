"""benchmarks/l2p_vs_official.py's recomputation note (hand-made sides)."""

from __future__ import annotations

from benchmarks.l2p_vs_official import MIB, NO_RECOMPUTE, recompute_note


def side(seconds: float, rss_mib: int, recompute: str) -> dict:
    return {"train_seconds": seconds, "eval_seconds": 10.0, "peak_rss_bytes": rss_mib * MIB,
            "recompute": recompute}


def test_the_note_states_what_recomputation_bought_in_the_same_run():
    sides = {"edgecl": side(50.0, 800, "all"), NO_RECOMPUTE: side(40.0, 900, "none")}
    (note,) = recompute_note(sides)
    assert "`train.recompute: all`" in note
    assert "peak RSS by -100 MiB and the train + eval time by 1.20x" in note


def test_without_recomputation_the_note_says_so():
    (note,) = recompute_note({"edgecl": side(50.0, 800, "none")})
    assert "`train.recompute: none`" in note
