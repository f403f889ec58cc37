#!/usr/bin/env python3
"""The credential endpoints AWS runs beside workloads, for DBKey's tests: the ECS/EKS container
credentials endpoint, EC2's instance metadata service with IMDSv2 session tokens, and IAM
Identity Center's (AWS SSO's) portal and OIDC token endpoints, which moto does not serve.

- Container: `GET /container/credentials` answers the fixed container credentials, only with
  the `Authorization` value this server printed at start.
- IMDS: `PUT /latest/api/token` (with `X-aws-ec2-metadata-token-ttl-seconds`) issues a session
  token; `GET /latest/meta-data/iam/security-credentials/` lists the role and
  `GET …/dbkey-test-role` answers the fixed instance credentials, both only with that token
  (`X-aws-ec2-metadata-token`), as IMDS does when IMDSv2 is required.

- SSO portal: `GET /federation/credentials?role_name=R&account_id=A` with
  `x-amz-sso_bearer_token` answers a role's credentials (`expiration` in milliseconds) for an
  access token the OIDC side issued and that has not expired; else 401 `UnauthorizedException`.
  Roles named `dbkey-…` in any 12-digit account are granted; others are 403.
- SSO OIDC: `POST /token` with `grantType` `refresh_token`, a registered `clientId` and its
  `clientSecret`, and a live `refreshToken` issues a new access token (`expiresIn` 3600) and a
  new refresh token; the old refresh token is spent, as a rotating authorization server does.
- Admin (`/_fake/…`, with the admin token): `sso-login` {expires_in} does what `aws sso login`
  does (registers a client, issues an access token good for `expires_in` seconds and a refresh
  token) and answers them; `sso-counts` {clientId} answers how many token refreshes and role
  credential requests that client's tokens were served (each test signs in with its own client).

Credentials are made at start and stay the same for the run, so that boto3 and DBKey can be
shown to find the same ones. Use: aws_metadata.py; prints one JSON line (port, authorization
token, admin token) and serves on 127.0.0.1 until killed. Test credentials only."""
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
        self.sso_clients: dict[str, str] = {}
        self.sso_access: dict[str, tuple[float, str]] = {}
        self.sso_refresh: dict[str, str] = {}
        self.sso_roles: dict[tuple[str, str], dict] = {}
        self.sso_counts: dict[str, dict[str, int]] = {}

    def admin(self, command: str, body: dict) -> dict:
        with self.lock:
            if command == "sso-login":
                client, secret = "client-" + secrets.token_urlsafe(8), secrets.token_urlsafe(48)
                self.sso_clients[client] = secret
                self.sso_counts[client] = {"token": 0, "credentials": 0}
                return self.issue(client, float(body.get("expires_in", 3600))) | {
                    "clientId": client, "clientSecret": secret}
            if command == "sso-counts":
                return dict(self.sso_counts.get(body.get("clientId", ""), {}))
        return super().admin(command, body)

    def issue(self, client: str, expires_in: float) -> dict:
        access, refresh = "aoa" + secrets.token_urlsafe(48), "aor" + secrets.token_urlsafe(48)
        self.sso_access[access] = (time.time() + expires_in, client)
        self.sso_refresh[refresh] = client
        return {"accessToken": access, "tokenType": "Bearer", "expiresIn": int(expires_in), "refreshToken": refresh}

    def sso_role_credentials(self, request) -> dict:
        token = request.headers.get("x-amz-sso_bearer_token", "")
        expires, client = self.sso_access.get(token, (0, ""))
        if expires <= time.time():
            raise Answer(401, {"message": "Session token not found or invalid"},
                         {"x-amzn-ErrorType": "UnauthorizedException"})
        role, account = (request.query.get(name, [""])[0] for name in ("role_name", "account_id"))
        if not role.startswith("dbkey-") or not (account.isdigit() and len(account) == 12):
            raise Answer(403, {"message": "No access"}, {"x-amzn-ErrorType": "ForbiddenException"})
        self.sso_counts[client]["credentials"] += 1
        if (account, role) not in self.sso_roles:
            made = credentials("ASIASSO")
            self.sso_roles[(account, role)] = {
                "accessKeyId": made["AccessKeyId"], "secretAccessKey": made["SecretAccessKey"],
                "sessionToken": made["Token"], "expiration": int((time.time() + 6 * 3600) * 1000)}
        return {"roleCredentials": self.sso_roles[(account, role)]}

    def sso_create_token(self, request) -> dict:
        body = request.json()
        client = body.get("clientId", "")
        if not secrets.compare_digest(self.sso_clients.get(client, "\0"), body.get("clientSecret", "")):
            raise Answer(401, {"error": "invalid_client"}, {"x-amzn-ErrorType": "InvalidClientException"})
        if body.get("grantType") != "refresh_token" or self.sso_refresh.get(body.get("refreshToken", "")) != client:
            raise Answer(400, {"error": "invalid_grant"}, {"x-amzn-ErrorType": "InvalidGrantException"})
        del self.sso_refresh[body["refreshToken"]]
        self.sso_counts[client]["token"] += 1
        return self.issue(client, 3600)

    def route(self, request) -> dict | str:
        if request.path == "/federation/credentials" and request.method == "GET":
            with self.lock:
                return self.sso_role_credentials(request)
        if request.path == "/token" and request.method == "POST":
            with self.lock:
                return self.sso_create_token(request)
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
    print(json.dumps({"port": port, "authorization": fake.authorization, "admin_token": fake.admin_token}),
          flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
