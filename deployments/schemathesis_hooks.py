"""Schemathesis hooks for deployments/schemathesis.sh.

A grant's (or purchase's) expires_at must be after the ledger's clock (a grant that is expired when it
arrives would be all breakage at once), a rule no static schema can state: the OpenAPI
document bounds it to years 1970-2199 only. So a schema-valid expires_at that is already in
the past is moved to a day from now before the call, and every other value is sent as
generated: data the schema refuses (a malformed date, year 1969 or 2200) is still sent as
is and must still be refused. The past-expiry rule itself is tested in Go
(TestGrantAndAdjustmentBounds).
"""
from datetime import datetime, timedelta, timezone

import schemathesis


def _future_if_past(value):
    if not isinstance(value, str) or len(value) < 4 or not value[:4].isdigit():
        return value
    if not 1970 <= int(value[:4]) <= 2199:
        return value  # outside the schema: must be refused
    try:
        when = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00").replace("t", "T"))
    except ValueError:
        return value  # not a date: must be refused
    if when.tzinfo is None:
        return value
    now = datetime.now(timezone.utc)
    if when > now + timedelta(minutes=1):
        return value
    return (now + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if case.method.upper() == "POST" and case.path.endswith(("/grants", "/purchases")) and isinstance(case.body, dict):
        if "expires_at" in case.body:
            case.body["expires_at"] = _future_if_past(case.body["expires_at"])
