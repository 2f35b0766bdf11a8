"""The doctests that pin values in the statistics modules run with the suite."""

import doctest

import pytest

from ferbench import metrics
from ferbench.report import verdicts


@pytest.mark.parametrize("module", [metrics, verdicts], ids=lambda m: m.__name__)
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
