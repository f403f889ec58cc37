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
- `/_fake/*` is the admin API, guarded by the admin token: keys, versions, states, principals,
  tokens (revoked), failure injection.

Use: gcp_kms.py STATE_DIR. Writes a service-account key file (0600) there, prints one JSON line
(port, admin token, key file) and serves on 127.0.0.1 until killed."""
from __future__ import annotations

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
from common import Answer, FakeServer, b64, unb64  # noqa: E402

KEY_NAME = r"projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/:]+"
SCOPES = {"https://www.googleapis.com/auth/cloudkms", "https://www.googleapis.com/auth/cloud-platform"}
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
        return super().admin(command, body)

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
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            raise Answer(400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"})
        claims = self.verified_jwt(form.get("assertion", ""), f"http://127.0.0.1:{self.port}/token")
        if not SCOPES & set(claims.get("scope", "").split()):
            raise Answer(400, {"error": "invalid_scope", "error_description": "Invalid OAuth scope."})
        return self.issue(claims["iss"])

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
