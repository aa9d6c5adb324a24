"""The mutation list of tests/mutate.py stays in step with the code it mutates."""

import mutate


def test_every_mutant_is_a_runnable_bug_of_todays_code():
    """Each mutant's old text occurs exactly once in its file, the mutated file still parses (a kill must be the
    tests' doing, not a SyntaxError's), its test files exist, and no two mutants are the same."""
    assert len(mutate.MUTANTS) >= 40
    assert [p for m in mutate.MUTANTS for p in mutate.problems(m)] == []
    keys = [(m["file"], m["old"], m["new"]) for m in mutate.MUTANTS]
    assert len(set(keys)) == len(keys)
    assert all(m["old"] != m["new"] and m["why"] for m in mutate.MUTANTS)
