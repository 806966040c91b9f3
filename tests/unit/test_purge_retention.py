"""Retention strings of ``purge --older-than``."""

import datetime as dt

import pytest

from wordloom_outbox.ops.purge import parse_retention


@pytest.mark.parametrize("text, seconds", [("7d", 7 * 86400), ("36h", 36 * 3600), ("90m", 5400),
                                           ("45s", 45), ("2w", 14 * 86400), (" 7d ", 7 * 86400)])
def test_accepted(text, seconds):
    assert parse_retention(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "7", "d", "0d", "-1d", "1.5d", "7 days", "1y", "7D", None])
def test_refused_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match="unit s, m, h, d or w"):
        parse_retention(text)
