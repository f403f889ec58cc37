#!/usr/bin/env python3
"""The two credential endpoints AWS runs beside workloads, for DBKey's tests: the ECS/EKS
container credentials endpoint and EC2's instance metadata service with IMDSv2 session tokens.

- Container: `GET /container/credentials` answers the fixed container credentials, only with
  the `Authorization` value this server printed at start.
- IMDS: `PUT /latest/api/token` (with `X-aws-ec2-metadata-token-ttl-seconds`) issues a session
  token; `GET /latest/meta-data/iam/security-credentials/` lists the role and
  `GET …/dbkey-test-role` answers the fixed instance credentials, both only with that token
  (`X-aws-ec2-metadata-token`), as IMDS does when IMDSv2 is required.

Credentials are made at start and stay the same for the run, so that boto3 and DBKey can be
shown to find the same ones. Use: aws_metadata.py; prints one JSON line (port, authorization
token) and serves on 127.0.0.1 until killed. Test credentials only."""
from __future__ import annotations

import datetime
import json
import os
import secrets
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Answer, FakeServer  # noqa: E402

ROLE = "dbkey-test-role"


def credentials(prefix: str) -> dict:
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=6)
    return {"AccessKeyId": prefix + secrets.token_hex(8).upper(), "SecretAccessKey": secrets.token_urlsafe(30),
            "Token": secrets.token_urlsafe(60), "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}


class Metadata(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.authorization = secrets.token_urlsafe(24)
        self.container = credentials("ASIACONTAINER")
        self.instance = credentials("ASIAINSTANCE")
        self.sessions: set[str] = set()

    def route(self, request) -> dict | str:
        if request.path == "/container/credentials":
            if not secrets.compare_digest(request.headers.get("authorization", ""), self.authorization):
                raise Answer(401, {"Message": "Unauthorized"})
            return self.container
        if request.path == "/latest/api/token" and request.method == "PUT":
            if not request.headers.get("x-aws-ec2-metadata-token-ttl-seconds"):
                raise Answer(400, "Missing X-aws-ec2-metadata-token-ttl-seconds")
            token = secrets.token_urlsafe(32)
            self.sessions.add(token)
            return token
        if request.path.startswith("/latest/meta-data/iam/security-credentials/"):
            if request.headers.get("x-aws-ec2-metadata-token") not in self.sessions:
                raise Answer(401, "Unauthorized")
            role = request.path.removeprefix("/latest/meta-data/iam/security-credentials/")
            if role == "":
                return ROLE
            if role == ROLE:
                return self.instance | {"Code": "Success", "Type": "AWS-HMAC",
                                        "LastUpdated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        raise Answer(404, "Not Found")


def main() -> None:
    fake = Metadata()
    port = fake.listen()
    print(json.dumps({"port": port, "authorization": fake.authorization}), flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
