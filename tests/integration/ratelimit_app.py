"""One of several processes sharing a store and a rate limit: try N tool calls, print how many got through."""

from __future__ import annotations

import sys

import wflo


@wflo.tool
def ping(i: int) -> int:
    return i


@wflo.workflow(name="ratelimit-app")
def burst(n: int) -> int:
    ok = 0
    for i in range(n):
        try:
            ping(i)
            ok += 1
        except wflo.errors.RateLimitedError:
            pass
    return ok


if __name__ == "__main__":
    wflo.policies.rate_limit("tool:ping", requests_per_minute=12, max_wait=0)
    print(burst.options(id=sys.argv[1]).run(int(sys.argv[2])))
