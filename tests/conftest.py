"""Fixtures the unit tests share."""
import pytest

from course_lib import data as D


@pytest.fixture(scope="module")
def tok():
    """The course's tokenizer."""
    return D.load_tokenizer()
