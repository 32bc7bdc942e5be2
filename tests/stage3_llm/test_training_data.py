"""data.max_samples: a seeded subset in file order, and a line that says the data was cut."""
import numpy as np

from stage3_llm.training_data import capped


def test_a_cap_keeps_a_seeded_subset_in_file_order_and_says_so():
    conversations = [f"c{i}" for i in range(10)]
    kept, note = capped(conversations, 4, seed=3, where="mine.json")
    expected = sorted(np.random.default_rng(3).permutation(10)[:4])  # the same draw, computed here
    assert kept == [f"c{i}" for i in expected]
    assert note == ("data.max_samples=4: training on 4 of the 10 conversations in mine.json (a seeded subset; "
                    "--set data.max_samples=null trains on all)")
    assert capped(conversations, 4, seed=3, where="mine.json")[0] == kept  # same seed, same subset


def test_no_cap_or_a_cap_above_the_data_keeps_everything_quietly():
    conversations = ["a", "b", "c"]
    assert capped(conversations, None, seed=0, where="x") == (conversations, None)
    assert capped(conversations, 3, seed=0, where="x") == (conversations, None)
