"""Cron expressions for KFP recurring runs.

KFP's scheduler (robfig/cron) takes **six** fields, seconds first::

    second minute hour day-of-month month day-of-week

People write the usual five-field form (``0 2 * * *`` = 02:00 daily). :func:`to_kfp_cron`
accepts five fields (prepending ``0`` seconds), six fields as they are, and the ``@daily`` family
of macros, validates every field (ranges, lists, steps, month/day names) and returns the
normalised six-field expression. Anything else raises :class:`CronError` saying which field is
wrong and why.
"""

from __future__ import annotations

import re

from activedet.errors import ConfigError


class CronError(ConfigError):
    """An invalid cron expression."""


#: (name, min, max, names accepted in this field -> value)
_MONTHS = {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}
_DAYS = {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}
FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 6, _DAYS),
)

MACROS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}

_ATOM = re.compile(r"^[A-Za-z0-9]+$")


def _value(token: str, field: tuple, expr: str) -> int:
    name, lo, hi, names = field
    if not _ATOM.match(token):
        raise CronError(f"invalid cron expression {expr!r}: {name} field: bad value {token!r}")
    if token.isdigit():
        value = int(token)
    elif token.upper() in names:
        value = names[token.upper()]
    else:
        hint = f" (names allowed here: {', '.join(names)})" if names else " (names are only allowed for month and day-of-week)"
        raise CronError(f"invalid cron expression {expr!r}: {name} field: {token!r} is not a number{hint}")
    if not lo <= value <= hi:
        extra = " (use 0 for Sunday)" if name == "day-of-week" and value == 7 else ""
        raise CronError(f"invalid cron expression {expr!r}: {name} field: {value} out of range {lo}-{hi}{extra}")
    return value


def _item(item: str, field: tuple, expr: str) -> str:
    """One element of a comma list: ``*``, ``?``, ``N``, ``A-B``, each optionally ``/STEP``."""
    name, lo, hi, _ = field
    if not item:
        raise CronError(f"invalid cron expression {expr!r}: {name} field: empty list element")
    base, _, step = item.partition("/")
    if "/" in item:
        if not step.isdigit() or int(step) < 1:
            raise CronError(f"invalid cron expression {expr!r}: {name} field: step {step!r} must be a positive integer")
        if int(step) > hi - lo + 1 and base in ("*", "?"):
            raise CronError(f"invalid cron expression {expr!r}: {name} field: step {step} is larger than the range {lo}-{hi}")
    if base == "?":
        if name not in ("day-of-month", "day-of-week"):
            raise CronError(f"invalid cron expression {expr!r}: '?' is only allowed for day-of-month and day-of-week, not {name}")
        out = "?"
    elif base == "*":
        out = "*"
    elif "-" in base:
        a, _, b = base.partition("-")
        va, vb = _value(a, field, expr), _value(b, field, expr)
        if va > vb:
            raise CronError(f"invalid cron expression {expr!r}: {name} field: range {base!r} goes backwards")
        out = f"{va}-{vb}"
    else:
        out = str(_value(base, field, expr))
    return f"{out}/{int(step)}" if "/" in item else out


def _field(text: str, field: tuple, expr: str) -> str:
    return ",".join(_item(item, field, expr) for item in text.split(","))


def to_kfp_cron(expr: str) -> str:
    """Validate a cron expression and return KFP's six-field form (seconds first).

    ``"0 2 * * *"`` -> ``"0 0 2 * * *"``; ``"@daily"`` -> ``"0 0 0 * * *"``; month and day
    names become numbers (``MON`` -> ``1``). Raises :class:`CronError` on anything invalid.
    """
    if not isinstance(expr, str) or not expr.strip():
        raise CronError("invalid cron expression: empty (expected e.g. '0 2 * * *' for 02:00 daily)")
    text = expr.strip()
    if text.startswith("@"):
        key = text.lower()
        if key in MACROS:
            return MACROS[key]
        raise CronError(
            f"invalid cron expression {expr!r}: unsupported macro (supported: {', '.join(sorted(MACROS))}; "
            "'@every' and '@reboot' are not)"
        )
    parts = text.split()
    if len(parts) == 5:
        parts = ["0", *parts]
    elif len(parts) != 6:
        raise CronError(
            f"invalid cron expression {expr!r}: {len(parts)} fields; expected 5 (minute hour day month weekday) "
            "or 6 (second first, KFP's form)"
        )
    return " ".join(_field(p, f, expr) for p, f in zip(parts, FIELDS, strict=False))
