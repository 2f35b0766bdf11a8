"""The doctests that pin values (statistics, pixel statistics, TensorFlow padding) run with the suite."""

import doctest

import pytest

from ferbench import metrics
from ferbench.data import augment
from ferbench.models import minixception
from ferbench.report import verdicts


@pytest.mark.parametrize("module", [metrics, verdicts, augment, minixception], ids=lambda m: m.__name__)
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
