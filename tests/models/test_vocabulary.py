"""The critic's vocabulary: one definition of its labels, questions, label reading and frames."""

import numpy as np
import pytest

from lift_jax.data import hra
from lift_jax.lift import reward
from lift_jax.models.critic import prompts, vocabulary


def test_sample_frame_indices_matches_vila():
  for n in (1, 5, 8, 9, 49, 50, 123):
    expected = np.linspace(0, n - 1, 8, dtype=int)  # VILA's get_frame_from_vcap
    np.testing.assert_array_equal(vocabulary.sample_frame_indices(n), expected)
  assert vocabulary.sample_frame_indices(49).tolist() == [0, 6, 13, 20, 27, 34, 41, 48]
  with pytest.raises(ValueError):
    vocabulary.sample_frame_indices(0)


def test_one_definition_used_everywhere():
  assert prompts.QUESTIONS is vocabulary.QUESTIONS
  assert hra.dimension_keys() == vocabulary.QUESTION_KEYS == reward.DIMENSIONS
  assert hra.LABELS is reward.LABELS is vocabulary.LABELS
  assert reward.parse_label is vocabulary.parse_label


def test_lift_rule_and_strict_rule():
  # LiFT's get_score: 'Normal' anywhere, else 'Bad' anywhere, else Good.
  assert vocabulary.parse_label("Good. Bad hands, Normal motion.", "lift") == "Normal"
  assert vocabulary.parse_label("Bad. Basically correct.", "lift") == "Bad"
  assert vocabulary.parse_label("I cannot tell.", "lift") == "Good"
  assert vocabulary.parse_label("I cannot tell.", "start") is None
  assert not vocabulary.strictly_readable("I cannot tell.")
  assert vocabulary.split_answer("**Normal** - slight jitter") == ("Normal", "slight jitter")
