#!/usr/bin/env python3
"""A throttling front for moto's KMS, for DBKey's tests: moto has no request quota, so this
passes every request on to moto untouched (its signature included: the Host header is kept) and,
past the rate set through its admin API (`/_fake/ratelimit`, Scripts/fakes/common.py), answers
as AWS KMS does when an account's quota is used up: HTTP 400, `ThrottlingException`, no
Retry-After.

Use: aws_throttle.py MOTO_URL MOTO_PID. Prints one JSON line (port, admin token), serves on
127.0.0.1 and exits when moto does."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import FakeServer  # noqa: E402

PASSED_ON = {"host", "content-type", "x-amz-target", "x-amz-date", "x-amz-security-token",
             "x-amz-content-sha256", "authorization"}


class ThrottlingFront(FakeServer):
    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream

    def handle(self, request):
        if request.path.startswith("/_fake/"):
            return super().handle(request)
        # The operation (TrentService.Decrypt) is what a rate limit's `path` matches.
        admitted, _ = self.rate_limit.take(request.headers.get("x-amz-target", ""))
        if not admitted:
            return 400, {"__type": "ThrottlingException", "message": "Rate exceeded"}, {}
        forwarded = urllib.request.Request(
            self.upstream + request.path, data=request.body or None, method=request.method,
            headers={name: value for name, value in request.headers.items() if name in PASSED_ON})
        try:
            with urllib.request.urlopen(forwarded, timeout=30) as answer:
                return answer.status, answer.read().decode(), {}
        except urllib.error.HTTPError as answer:
            return answer.code, answer.read().decode(), {}


def main() -> None:
    upstream, moto_pid = sys.argv[1], int(sys.argv[2])
    front = ThrottlingFront(upstream)
    port = front.listen()
    print(json.dumps({"port": port, "admin_token": front.admin_token}), flush=True)
    while True:
        time.sleep(1)
        try:
            os.kill(moto_pid, 0)
        except ProcessLookupError:
            return


if __name__ == "__main__":
    main()
