"""Test helpers. The replay cases assert inside these modules: pytest rewrites their asserts too,
so that a failing comparison shows both sides."""

import pytest

pytest.register_assert_rewrite("tests.helpers.replay", "tests.helpers.replay_target")
