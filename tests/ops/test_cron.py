"""Cron conversion to KFP's six-field form: a table of accepted and rejected expressions."""

from __future__ import annotations

import pytest

from activedet.errors import ConfigError
from activedet.ops.cron import CronError, to_kfp_cron


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("0 2 * * *", "0 0 2 * * *"),
        ("*/15 * * * *", "0 */15 * * * *"),
        ("30 1 * * 1-5", "0 30 1 * * 1-5"),
        ("0 3 1,15 * *", "0 0 3 1,15 * *"),
        ("0 6 * JAN,jul MON-FRI", "0 0 6 * 1,7 1-5"),
        ("0 0 * * sun", "0 0 0 * * 0"),
        ("5 0 2 * * *", "5 0 2 * * *"),  # six fields: kept
        ("0 0 2 ? * *", "0 0 2 ? * *"),
        ("0 0-30/10 9-17 * * *", "0 0-30/10 9-17 * * *"),
        ("  0   2 * *   * ", "0 0 2 * * *"),
        ("@daily", "0 0 0 * * *"),
        ("@midnight", "0 0 0 * * *"),
        ("@hourly", "0 0 * * * *"),
        ("@weekly", "0 0 0 * * 0"),
        ("@MONTHLY", "0 0 0 1 * *"),
        ("@yearly", "0 0 0 1 1 *"),
    ],
)
def test_accepted(given, expected):
    assert to_kfp_cron(given) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "empty"),
        ("0 2 * *", "4 fields; expected 5"),
        ("0 0 2 * * * *", "7 fields"),
        ("60 * * * *", "minute field: 60 out of range 0-59"),
        ("0 24 * * *", "hour field: 24 out of range 0-23"),
        ("0 0 0 * * *x", "day-of-week field"),
        ("0 2 0 * *", "day-of-month field: 0 out of range 1-31"),
        ("0 2 * 13 *", "month field: 13 out of range 1-12"),
        ("0 2 * * 7", "use 0 for Sunday"),
        ("0 2 * * FOO", "'FOO' is not a number"),
        ("0 MON * * *", "names are only allowed for month and day-of-week"),
        ("0 2 * JAN-MON *", "'MON' is not a number"),
        ("*/0 * * * *", "step '0' must be a positive integer"),
        ("*/x * * * *", "step 'x'"),
        ("*/61 * * * *", "step 61 is larger than the range 0-59"),
        ("0 5-2 * * *", "range '5-2' goes backwards"),
        ("0 1,,2 * * *", "empty list element"),
        ("0 ? * * *", "'?' is only allowed for day-of-month and day-of-week"),
        ("@reboot", "unsupported macro"),
        ("@every 1h", "unsupported macro"),
        ("0 -1 * * *", "hour field"),
    ],
)
def test_rejected(given, message):
    with pytest.raises(CronError, match="invalid cron expression") as info:
        to_kfp_cron(given)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_cron_error_is_a_config_error():
    assert issubclass(CronError, ConfigError)
