#!/usr/bin/env python3
"""A fake Google Cloud KMS for DBKey's tests, with real cryptography: Cloud KMS's REST v1
`encrypt`, `decrypt` and `cryptoKeys.get`, an OAuth token endpoint (a service account's RS256
JWT, checked against the account's public key) and the metadata server's token path.

- Each key version holds its own random AES-256 key. A ciphertext is the version's number, a
  random 96-bit nonce and AES-256-GCM over the plaintext, bound to the key's name and the
  request's additionalAuthenticatedData. Versions are ENABLED, DISABLED or DESTROYED; a new
  version becomes the primary.
- Every CRC32C field is checked and answered as Cloud KMS does (`plaintextCrc32c`,
  `additionalAuthenticatedDataCrc32c`, `ciphertextCrc32c`, the `verified…Crc32c` answers).
- A bearer token must be one this server issued (token endpoint or metadata path) or one
  registered through the admin API, and unexpired. Each principal has a set of permissions.
  Errors are Cloud KMS's JSON errors and statuses (401, 403, 404, 400 INVALID_ARGUMENT or
  FAILED_PRECONDITION; 429 and 503 by injection; 429 RESOURCE_EXHAUSTED past a configured rate).
- The other Application Default Credentials a client may hold, each with real checks: a user's
  refresh token (`authorized_user`, as `gcloud auth application-default login` writes it,
  exchanged at `/token` with its OAuth client's id and secret); service-account impersonation
  (IAM Credentials' `generateAccessToken` at
  `/v1/projects/-/serviceAccounts/EMAIL:generateAccessToken`, for a caller allowed to
  impersonate that account); and workload identity federation (`external_account`: STS's
  token exchange at `/v1/token`, its subject token an RS256 JWT signed by the fake's own OIDC
  issuer, checked for signature, the pool provider's audience and expiry; the subject token is
  served from a file, or from `/_subject/ID` with a header, as a URL-sourced credential reads
  it).
- `/_fake/*` is the admin API, guarded by the admin token: keys, versions, states, principals,
  tokens (revoked), failure injection, users, impersonation, workload identity pools.

Use: gcp_kms.py STATE_DIR. Writes a service-account key file (0600) there, prints one JSON line
(port, admin token, key file) and serves on 127.0.0.1 until killed."""
from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import struct
import sys
import time

import google_crc32c
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Answer, FakeServer, OIDCIssuer, b64, unb64  # noqa: E402

KEY_NAME = r"projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/:]+"
SCOPES = {"https://www.googleapis.com/auth/cloudkms", "https://www.googleapis.com/auth/cloud-platform"}
# What a token that impersonates a service account may be asked for.
IAM_SCOPE = "https://www.googleapis.com/auth/iam"
ALL_PERMISSIONS = ["cloudkms.cryptoKeyVersions.useToEncrypt", "cloudkms.cryptoKeyVersions.useToDecrypt",
                   "cloudkms.cryptoKeys.get"]
STATES = {"ENABLED": 1, "DISABLED": 2, "DESTROYED": 3}
TOKEN_LIFETIME = 3600


def crc(data: bytes) -> str:
    return str(google_crc32c.value(data))


def error(status: int, code: str, message: str) -> Answer:
    return Answer(status, {"error": {"code": status, "message": message, "status": code}})


class CloudKms(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.keys: dict[str, dict] = {}          # key name -> {"versions": [{"key", "state"}], "primary": n}
        self.accounts: dict[str, dict] = {}      # client_email -> {"public_key", "key_id", "permissions"}
        self.tokens: dict[str, dict] = {}        # token -> {"principal", "expires"}
        self.metadata_principal = "metadata@fake.iam.gserviceaccount.com"
        self.accounts[self.metadata_principal] = {"public_key": None, "key_id": None, "permissions": ALL_PERMISSIONS}
        self.port = 0
        self.refresh_tokens: dict[str, dict] = {}  # refresh token -> {"client_id", "client_secret", "principal"}
        self.impersonators: dict[str, set] = {}    # target service account -> principals allowed to impersonate it
        self.pools: dict[str, dict] = {}           # audience -> {"subject", "principal"}
        self.subject_tokens: dict[str, dict] = {}  # id -> {"token", "header"}, served at /_subject/ID
        self.issuer = OIDCIssuer()

    # Admin ----------------------------------------------------------------------------------

    def admin(self, command: str, body: dict) -> dict:
        with self.lock:
            if command == "keys":
                name = body["name"]
                self.keys[name] = {"versions": [], "primary": 0}
                self.add_version(name)
                return {"name": name}
            if command == "rotate":
                return {"version": self.add_version(body["name"])}
            if command == "state":
                name, number = body["version"].split("/cryptoKeyVersions/")
                self.keys[name]["versions"][int(number) - 1]["state"] = body["state"]
                return {}
            if command == "principal":
                account = self.accounts.setdefault(body["principal"], {"public_key": None, "key_id": None})
                account["permissions"] = body["permissions"]
                return {}
            if command == "account":
                return {"path": self.make_account(body["directory"], body.get("permissions", ALL_PERMISSIONS))}
            if command == "revoke":
                self.tokens = {token: entry for token, entry in self.tokens.items()
                               if entry["principal"] != body["principal"]}
                return {}
            if command == "issued":
                return {"tokens": list(self.tokens)}
            if command == "user":
                return self.make_user(body["directory"], body.get("permissions", ALL_PERMISSIONS))
            if command == "impersonation":
                # `source` may impersonate a new service account `target` that has `permissions`.
                target = f"target-{secrets.token_hex(4)}@fake-project.iam.gserviceaccount.com"
                self.accounts[target] = {"public_key": None, "key_id": None,
                                         "permissions": body.get("permissions", ALL_PERMISSIONS)}
                self.impersonators[target] = set(body.get("sources", []))
                return {"target": target}
            if command == "pool":
                return self.make_pool(body)
        return super().admin(command, body)

    def make_user(self, directory: str, permissions: list[str]) -> dict:
        """A user with a refresh token for a new OAuth client; the authorized_user file gcloud writes."""
        principal = f"user-{secrets.token_hex(4)}@example.com"
        self.accounts[principal] = {"public_key": None, "key_id": None, "permissions": permissions}
        client_id = f"{secrets.randbits(48)}-fake.apps.googleusercontent.com"
        client_secret = "d-FL95Q" + secrets.token_urlsafe(18)
        refresh_token = "1//0" + secrets.token_urlsafe(40)
        self.refresh_tokens[refresh_token] = {"client_id": client_id, "client_secret": client_secret,
                                              "principal": principal}
        document = {"type": "authorized_user", "client_id": client_id, "client_secret": client_secret,
                    "refresh_token": refresh_token, "token_uri": f"http://127.0.0.1:{self.port}/token",
                    "account": "", "universe_domain": "googleapis.com"}
        path = os.path.join(directory, f"authorized-user-{secrets.token_hex(4)}.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(document, file, indent=2)
        return {"path": path, "principal": principal}

    def make_pool(self, body: dict) -> dict:
        """A workload identity pool provider trusting the fake's issuer for `subject`, a subject
        token (for `token_subject`, by default the same) in a file and at /_subject/ID, and an
        external_account configuration for each (with impersonation when `impersonate` names a
        service account)."""
        number = secrets.randbelow(10**12)
        audience = (f"//iam.googleapis.com/projects/{number}/locations/global/workloadIdentityPools/"
                    f"dbkey/providers/fake")
        principal = f"principal://iam.googleapis.com/projects/{number}/locations/global/workloadIdentityPools/" \
                    f"dbkey/subject/{body['subject']}"
        self.accounts[principal] = {"public_key": None, "key_id": None,
                                    "permissions": body.get("permissions", ALL_PERMISSIONS)}
        self.pools[audience] = {"subject": body["subject"], "principal": principal}
        token = self.subject_token(body.get("token_subject", body["subject"]), audience)
        directory = body["directory"]
        token_file = os.path.join(directory, f"subject-token-{number}")
        with open(token_file, "w") as file:
            file.write(json.dumps({"id_token": token}) if body.get("format") == "json" else token)
        os.chmod(token_file, 0o644)
        served = secrets.token_hex(8)
        header = secrets.token_urlsafe(12)
        self.subject_tokens[served] = {"token": {"id_token": token} if body.get("format") == "json" else token,
                                       "header": header}
        fmt = {"type": "json", "subject_token_field_name": "id_token"} if body.get("format") == "json" \
            else {"type": "text"}
        base = {"type": "external_account", "audience": audience,
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                "token_url": f"http://127.0.0.1:{self.port}/v1/token", "universe_domain": "googleapis.com"}
        if body.get("impersonate"):
            base["service_account_impersonation_url"] = (
                f"http://127.0.0.1:{self.port}/v1/projects/-/serviceAccounts/{body['impersonate']}:generateAccessToken")
            self.impersonators.setdefault(body["impersonate"], set()).add(principal)
        paths = {}
        for kind, source in [("file", {"file": token_file, "format": fmt}),
                             ("url", {"url": f"http://127.0.0.1:{self.port}/_subject/{served}",
                                      "headers": {"X-Subject-Header": header}, "format": fmt})]:
            path = os.path.join(directory, f"external-account-{kind}-{number}.json")
            with open(path, "w") as file:
                json.dump(base | {"credential_source": source}, file, indent=2)
            # A workload identity configuration holds no secret: Kubernetes mounts it readable.
            os.chmod(path, 0o644)
            paths[kind] = path
        return {"file_config": paths["file"], "url_config": paths["url"], "token_file": token_file,
                "principal": principal, "audience": audience}

    def subject_token(self, subject: str, audience: str) -> str:
        now = int(time.time())
        return self.issuer.sign({"iss": f"http://127.0.0.1:{self.port}/oidc", "sub": subject,
                                 "aud": "https:" + audience, "iat": now, "exp": now + 3600})

    def throttle_body(self) -> dict:
        # Cloud KMS's answer when a project's request quota is used up; it sends no Retry-After.
        return {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Quota exceeded for quota "
                          "metric 'Cryptographic requests' and limit 'Cryptographic requests per minute'."}}

    def add_version(self, name: str) -> str:
        key = self.keys[name]
        key["versions"].append({"key": AESGCM.generate_key(256), "state": "ENABLED"})
        key["primary"] = len(key["versions"])
        return f"{name}/cryptoKeyVersions/{key['primary']}"

    def make_account(self, directory: str, permissions: list[str]) -> str:
        """A service account with a new RSA key; its JSON key file, as Google issues it."""
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        email = f"sa-{secrets.token_hex(4)}@fake-project.iam.gserviceaccount.com"
        key_id = secrets.token_hex(20)
        self.accounts[email] = {"public_key": private.public_key(), "key_id": key_id, "permissions": permissions}
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        document = {"type": "service_account", "project_id": "fake-project", "private_key_id": key_id,
                    "private_key": pem, "client_email": email, "client_id": str(secrets.randbits(64)),
                    "auth_uri": f"http://127.0.0.1:{self.port}/auth",
                    "token_uri": f"http://127.0.0.1:{self.port}/token"}
        path = os.path.join(directory, f"{email.split('@')[0]}.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(document, file, indent=2)
        return path

    # Tokens ---------------------------------------------------------------------------------

    def issue(self, principal: str) -> dict:
        token = "ya29.fake-" + secrets.token_urlsafe(32)
        self.tokens[token] = {"principal": principal, "expires": time.time() + TOKEN_LIFETIME}
        return {"access_token": token, "expires_in": TOKEN_LIFETIME, "token_type": "Bearer"}

    def token_endpoint(self, request) -> dict:
        form = request.form()
        if form.get("grant_type") == "refresh_token":
            entry = self.refresh_tokens.get(form.get("refresh_token", ""))
            if not entry or entry["client_id"] != form.get("client_id") \
                    or not secrets.compare_digest(entry["client_secret"], form.get("client_secret", "")):
                raise Answer(400, {"error": "invalid_grant", "error_description": "Bad Request"})
            return self.issue(entry["principal"])
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            raise Answer(400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"})
        # The audience is the token endpoint: this one's URL, or Google's, which google-auth
        # always writes whatever the key file's token_uri.
        assertion = form.get("assertion", "")
        try:
            claims = self.verified_jwt(assertion, f"http://127.0.0.1:{self.port}/token")
        except Answer:
            claims = self.verified_jwt(assertion, "https://oauth2.googleapis.com/token")
        if not (SCOPES | {IAM_SCOPE}) & set(claims.get("scope", "").split()):
            raise Answer(400, {"error": "invalid_scope", "error_description": "Invalid OAuth scope."})
        return self.issue(claims["iss"])

    def sts_exchange(self, request) -> dict:
        """STS's token exchange for workload identity federation."""
        form = request.form() if "x-www-form-urlencoded" in request.headers.get("content-type", "") else request.json()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange":
            raise Answer(400, {"error": "invalid_grant", "error_description": "Invalid grant_type."})
        pool = self.pools.get(form.get("audience", ""))
        if not pool:
            raise Answer(400, {"error": "invalid_target", "error_description": "The target service indicated by "
                               "the \"audience\" parameters is invalid."})
        if form.get("subject_token_type") != "urn:ietf:params:oauth:token-type:jwt" \
                or form.get("requested_token_type") != "urn:ietf:params:oauth:token-type:access_token":
            raise Answer(400, {"error": "invalid_request", "error_description": "Invalid token types."})
        payload = self.issuer.verified_claims(form.get("subject_token", ""))
        if payload is None:
            raise Answer(400, {"error": "invalid_grant", "error_description": "The subject token is malformed or "
                               "its signature does not verify."})
        if payload.get("aud") != "https:" + form["audience"] or payload.get("exp", 0) < time.time():
            raise Answer(400, {"error": "invalid_grant", "error_description": "The audience in ID Token does not "
                               "match the expected audience, or the token has expired."})
        if payload.get("sub") != pool["subject"]:
            raise Answer(400, {"error": "unauthorized_client", "error_description": "The given credential is "
                               "rejected by the attribute condition."})
        issued = self.issue(pool["principal"])
        return issued | {"issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}

    def generate_access_token(self, request, target: str) -> dict:
        """IAM Credentials' generateAccessToken: a token of `target` for a caller allowed to
        impersonate it."""
        token = request.bearer() or ""
        entry = self.tokens.get(token)
        if not entry or entry["expires"] < time.time():
            raise error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if target not in self.accounts or entry["principal"] not in self.impersonators.get(target, set()):
            raise error(403, "PERMISSION_DENIED", "Permission 'iam.serviceAccounts.getAccessToken' denied on "
                        "resource (or it may not exist).")
        body = request.json()
        if not SCOPES & set(body.get("scope", [])):
            raise error(400, "INVALID_ARGUMENT", "Invalid scope.")
        issued = self.issue(target)
        expires = datetime.datetime.fromtimestamp(time.time() + TOKEN_LIFETIME, datetime.timezone.utc)
        return {"accessToken": issued["access_token"], "expireTime": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def verified_jwt(self, assertion: str, audience: str) -> dict:
        """The claims of a service account's RS256 JWT, checked: signature, key id, audience
        (or, for a self-signed JWT used as the token itself, a scope) and lifetime."""
        try:
            header_b64, claims_b64, signature_b64 = assertion.split(".")
            header = json.loads(unb64(header_b64, url=True))
            claims = json.loads(unb64(claims_b64, url=True))
        except ValueError:
            raise Answer(400, {"error": "invalid_grant", "error_description": "Invalid JWT."})
        account = self.accounts.get(claims.get("iss", ""))
        if header.get("alg") != "RS256" or not account or not account["public_key"]:
            raise Answer(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        try:
            account["public_key"].verify(unb64(signature_b64, url=True), f"{header_b64}.{claims_b64}".encode(),
                                         padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise Answer(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        now = time.time()
        if header.get("kid") not in (None, account["key_id"]):
            raise Answer(400, {"error": "invalid_grant", "error_description": "Invalid key id."})
        if claims.get("aud") != audience and not (audience == "" and SCOPES & set(claims.get("scope", "").split())):
            raise Answer(400, {"error": "invalid_grant", "error_description": "Invalid JWT audience."})
        if not (claims.get("iat", 0) <= now + 60 and now < claims.get("exp", 0) <= claims["iat"] + 3600):
            raise Answer(400, {"error": "invalid_grant",
                               "error_description": "Invalid JWT: Token must be a short-lived token"})
        return claims

    def principal(self, request, permission: str) -> str:
        token = request.bearer() or ""
        entry = self.tokens.get(token)
        if entry is None and token.count(".") == 2:
            # A self-signed JWT, as Google's client libraries send for a service account:
            # audience the service (https://cloudkms.googleapis.com/) or a scope claim.
            try:
                claims = self.verified_jwt(token, "https://cloudkms.googleapis.com/")
            except Answer:
                try:
                    claims = self.verified_jwt(token, "")
                except Answer:
                    claims = None
            entry = claims and {"principal": claims["iss"], "expires": claims["exp"]}
        if not entry or entry["expires"] < time.time():
            raise error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 "
                        "access token, login cookie or other valid authentication credential.")
        account = self.accounts.get(entry["principal"], {"permissions": []})
        if permission not in account["permissions"]:
            raise error(403, "PERMISSION_DENIED", f"Permission '{permission}' denied on resource (or it may not "
                        "exist).")
        return entry["principal"]

    # Cloud KMS -------------------------------------------------------------------------------

    def route(self, request) -> dict:
        path = request.path
        if request.method == "POST" and path == "/token":
            return self.token_endpoint(request)
        if request.method == "POST" and path == "/v1/token":
            return self.sts_exchange(request)
        impersonation = re.fullmatch(r"/v1/projects/-/serviceAccounts/([^/:]+):generateAccessToken", path)
        if request.method == "POST" and impersonation:
            return self.generate_access_token(request, impersonation.group(1))
        served = re.fullmatch(r"/_subject/([0-9a-f]+)", path)
        if served and served.group(1) in self.subject_tokens:
            entry = self.subject_tokens[served.group(1)]
            if request.headers.get("x-subject-header") != entry["header"]:
                raise Answer(403, {"error": "the subject token's header is missing"})
            return entry["token"]
        if path == "/computeMetadata/v1/instance/service-accounts/default/token":
            if request.headers.get("metadata-flavor") != "Google":
                raise Answer(403, "Missing Metadata-Flavor:Google header.")
            return self.issue(self.metadata_principal)
        match = re.fullmatch(rf"/v1/({KEY_NAME})(:encrypt|:decrypt)?", path)
        if not match:
            raise error(404, "NOT_FOUND", f"No route for {path}.")
        name, operation = match.group(1), match.group(2)
        ints = "enum-encoding=int" in "".join(request.query.get("$alt", []))
        with self.lock:
            if operation is None and request.method == "GET":
                self.principal(request, "cloudkms.cryptoKeys.get")
                return self.describe(name, ints)
            if operation == ":encrypt" and request.method == "POST":
                self.principal(request, "cloudkms.cryptoKeyVersions.useToEncrypt")
                return self.encrypt(name, request.json(), ints)
            if operation == ":decrypt" and request.method == "POST":
                self.principal(request, "cloudkms.cryptoKeyVersions.useToDecrypt")
                return self.decrypt(name, request.json(), ints)
        raise error(404, "NOT_FOUND", f"No route for {request.method} {path}.")

    def key(self, name: str) -> dict:
        if name not in self.keys:
            raise error(404, "NOT_FOUND", f"{name} not found.")
        return self.keys[name]

    def describe(self, name: str, ints: bool) -> dict:
        key = self.key(name)
        state = key["versions"][key["primary"] - 1]["state"]
        return {"name": name, "purpose": 1 if ints else "ENCRYPT_DECRYPT",
                "primary": {"name": f"{name}/cryptoKeyVersions/{key['primary']}",
                            "state": STATES[state] if ints else state,
                            "algorithm": 1 if ints else "GOOGLE_SYMMETRIC_ENCRYPTION",
                            "protectionLevel": 1 if ints else "SOFTWARE"}}

    @staticmethod
    def field(body: dict, name: str) -> bytes:
        try:
            return unb64(body.get(name, ""))
        except ValueError:
            raise error(400, "INVALID_ARGUMENT", f"Invalid value at '{name}': not base64.")

    @staticmethod
    def check_crc(body: dict, field: str, data: bytes) -> bool:
        if field not in body:
            return False
        if str(body[field]) != crc(data):
            snake = re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), field)
            raise error(400, "INVALID_ARGUMENT", f"The checksum in field {snake} did not match the data in field "
                        f"{snake.removesuffix('_crc32c')}.")
        return True

    def encrypt(self, name: str, body: dict, ints: bool) -> dict:
        key = self.key(name)
        plaintext, aad = self.field(body, "plaintext"), self.field(body, "additionalAuthenticatedData")
        verified_plaintext = self.check_crc(body, "plaintextCrc32c", plaintext)
        verified_aad = self.check_crc(body, "additionalAuthenticatedDataCrc32c", aad)
        if not plaintext or len(plaintext) > 65536:
            raise error(400, "INVALID_ARGUMENT", "Plaintext must be between 1 and 65536 bytes.")
        version = key["versions"][key["primary"] - 1]
        if version["state"] != "ENABLED":
            raise error(400, "FAILED_PRECONDITION", f"{name}/cryptoKeyVersions/{key['primary']} is not enabled, "
                        f"current state is: {version['state']}.")
        nonce = os.urandom(12)
        sealed = AESGCM(version["key"]).encrypt(nonce, plaintext, name.encode() + b"\0" + aad)
        ciphertext = struct.pack(">I", key["primary"]) + nonce + sealed
        return {"name": f"{name}/cryptoKeyVersions/{key['primary']}", "ciphertext": b64(ciphertext),
                "ciphertextCrc32c": crc(ciphertext), "verifiedPlaintextCrc32c": verified_plaintext,
                "verifiedAdditionalAuthenticatedDataCrc32c": verified_aad,
                "protectionLevel": 1 if ints else "SOFTWARE"}

    def decrypt(self, name: str, body: dict, ints: bool) -> dict:
        key = self.key(name)
        ciphertext, aad = self.field(body, "ciphertext"), self.field(body, "additionalAuthenticatedData")
        self.check_crc(body, "ciphertextCrc32c", ciphertext)
        self.check_crc(body, "additionalAuthenticatedDataCrc32c", aad)
        invalid = error(400, "INVALID_ARGUMENT", "Decryption failed: the ciphertext is invalid.")
        if len(ciphertext) < 4 + 12 + 16:
            raise invalid
        number = struct.unpack(">I", ciphertext[:4])[0]
        if not 1 <= number <= len(key["versions"]):
            raise invalid
        version = key["versions"][number - 1]
        if version["state"] != "ENABLED":
            raise error(400, "FAILED_PRECONDITION", f"{name}/cryptoKeyVersions/{number} is not enabled, current "
                        f"state is: {version['state']}.")
        try:
            plaintext = AESGCM(version["key"]).decrypt(ciphertext[4:16], ciphertext[16:], name.encode() + b"\0" + aad)
        except InvalidTag:
            raise invalid
        return {"plaintext": b64(plaintext), "plaintextCrc32c": crc(plaintext), "usedPrimary": number == key["primary"],
                "protectionLevel": 1 if ints else "SOFTWARE"}


def main() -> None:
    directory = sys.argv[1]
    fake = CloudKms()
    fake.port = fake.listen()
    account = fake.make_account(directory, ALL_PERMISSIONS)
    print(json.dumps({"port": fake.port, "admin_token": fake.admin_token, "service_account": account}), flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
