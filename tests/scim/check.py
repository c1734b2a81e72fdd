"""Runs scim2-tester's checker against a SCIM 2.0 server and fails on any failed check.

Environment: SCIM_URL (the base, e.g. http://127.0.0.1:8080/scim/v2) and SCIM_TOKEN (a
bearer token). Prints one line per check and a closing "N passed, N failed" line; exits 1
when a check fails or when nothing ran.
"""

import os
import sys

from httpx2 import Client
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

FAILED = {Status.ERROR, Status.CRITICAL}


def main() -> int:
    url = os.environ["SCIM_URL"].rstrip("/")
    token = os.environ["SCIM_TOKEN"]
    http = Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    results = check_server(SyncSCIMClient(http))
    passed = failed = skipped = 0
    for r in results:
        if r.status in FAILED:
            failed += 1
        elif r.status == Status.SKIPPED:
            skipped += 1
        else:
            passed += 1
        where = f"[{r.resource_type}] " if r.resource_type else ""
        print(f"{r.status.name:<10} {where}{r.title}: {r.reason}")
    print(f"scim2-tester: {passed} passed, {failed} failed, {skipped} skipped")
    if passed == 0:
        print("no check ran", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
