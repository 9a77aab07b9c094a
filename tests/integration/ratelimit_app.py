"""One of several processes sharing a store and a rate limit: try N tool calls, print how many got through."""

from __future__ import annotations

import sys

import wflo


@wflo.tool
def ping(i: int) -> int:
    return i


# Refused calls are what this app expects (18 of the 30 between three processes, any number of
# them in a row when another process took the bucket first): the loop guard's stop after the same
# error five times in a row would end the run before its count is printed.
@wflo.workflow(name="ratelimit-app", guards=wflo.LoopGuard(max_same_error=None))
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
