"""Schemathesis hooks for deployments/schemathesis.sh.

A grant's (or purchase's) expires_at must be after the ledger's clock (a grant that is expired when it
arrives would be all breakage at once), a rule no static schema can state: the OpenAPI
document bounds it to years 1970-2199 only. So a schema-valid expires_at that is already in
the past is moved to a day from now before the call, and every other value is sent as
generated: data the schema refuses (a malformed date, year 1969 or 2200) is still sent as
is and must still be refused. The past-expiry rule itself is tested in Go
(TestGrantAndAdjustmentBounds).

The same holds for two more rules no static schema can state, each tested in Go:
- a subscription's plan_id must be a plan of the running price book (unknown_plan) and its
  anchor_at not after the ledger's clock (bad_anchor): a schema-valid plan id is sent as the
  built-in plan "pro" and a schema-valid future anchor as a day ago (TestSubscriptionRoutes);
- a budget's project must not be the account itself (self_budget): when the two path ids
  are equal, the project id is changed to another valid id (TestBudgetRoutes).
"""
from datetime import datetime, timedelta, timezone

import schemathesis

PLANS = ("starter", "pro", "scale")


def _schema_time(value):
    """The aware datetime of a schema-valid date-time in years 1970-2199, else None."""
    if not isinstance(value, str) or len(value) < 4 or not value[:4].isdigit():
        return None
    if not 1970 <= int(value[:4]) <= 2199:
        return None
    try:
        when = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00").replace("t", "T"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _past_if_future(value):
    when = _schema_time(value)
    if when is None or when <= datetime.now(timezone.utc) - timedelta(minutes=1):
        return value
    return (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


# The code points the Id schema's pattern (and events.CheckID) refuses: controls, spaces,
# default-ignorable and invisible characters, private use, noncharacters, lone surrogates.
_BANNED = [(0x0, 0x20), (0x7F, 0xA0), (0xAD, 0xAD), (0x34F, 0x34F), (0x61C, 0x61C), (0x115F, 0x1160),
           (0x1680, 0x1680), (0x17B4, 0x17B5), (0x180B, 0x180F), (0x2000, 0x200F), (0x2028, 0x202F),
           (0x205F, 0x206F), (0x3000, 0x3000), (0x3164, 0x3164), (0xD800, 0xDFFF), (0xE000, 0xF8FF),
           (0xFDD0, 0xFDEF), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFFF),
           (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF), (0xF0000, 0x10FFFF)]


def _schema_id(value):
    """Whether value is an id the Id schema accepts: 1 to 128 code points, not starting with
    '.', none of them refused. Only such a value is replaced: data the schema refuses is sent
    as generated and must still be refused."""
    if not isinstance(value, str) or not 1 <= len(value) <= 128 or value.startswith("."):
        return False
    for ch in value:
        c = ord(ch)
        if (c & 0xFFFE) == 0xFFFE or any(lo <= c <= hi for lo, hi in _BANNED):
            return False
    return True


def _future_if_past(value):
    when = _schema_time(value)
    if when is None or when > datetime.now(timezone.utc) + timedelta(minutes=1):
        return value
    return (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    method = case.method.upper()
    if method == "POST" and case.path.endswith(("/grants", "/purchases")) and isinstance(case.body, dict):
        if "expires_at" in case.body:
            case.body["expires_at"] = _future_if_past(case.body["expires_at"])
    if method == "PUT" and case.path.endswith("/subscription") and isinstance(case.body, dict):
        if _schema_id(case.body.get("plan_id")) and case.body["plan_id"] not in PLANS:
            case.body["plan_id"] = "pro"
        if "anchor_at" in case.body:
            case.body["anchor_at"] = _past_if_future(case.body["anchor_at"])
    if case.path.endswith("/budgets/{project}") and isinstance(case.path_parameters, dict):
        pp = case.path_parameters
        if _schema_id(pp.get("id")) and pp.get("id") == pp.get("project"):
            p = pp["project"]
            pp["project"] = (p[:-1] if len(p) >= 128 else p) + ("x" if not p.endswith("x") else "y")
