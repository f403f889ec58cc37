#!/usr/bin/env python3
"""A fake Azure Key Vault (and Managed HSM) for DBKey's tests, with real cryptography, and the
Microsoft Entra endpoints a client needs to reach it.

- Key Vault data plane, api-version 7.4 and later: `GET /keys/NAME[/VERSION]`,
  `POST /keys/NAME[/VERSION]/wrapkey` and `/unwrapkey`. Keys are RSA (2048 or 3072 bits;
  RSA-OAEP-256 and RSA-OAEP) or oct-HSM (256 bits; A256KW, RFC 3394), each version its own
  key material with a 32-hex-digit id; a version can be disabled. Errors are Key Vault's JSON
  errors: 401 with the `WWW-Authenticate: Bearer authorization=…, resource=…` challenge, 403
  Forbidden (RBAC, or KeyDisabled), 404 KeyNotFound, 400 BadParameter.
- Entra: the v2.0 client-credentials token endpoint (`/TENANT/oauth2/v2.0/token`) — with a
  client secret, or with a federated credential's assertion (workload identity: a JWT that the
  fake's own OIDC issuer signed with RS256, as a Kubernetes cluster signs a projected
  service-account token, checked for signature, audience `api://AzureADTokenExchange`, subject
  and expiry), or with a certificate's assertion (an RS256 or PS256 JWT whose `x5t` or
  `x5t#S256` names the client's registered certificate, signed by its key, for the token
  endpoint, issued by and for the client, unexpired; an `x5c` chain must start with that
  certificate) — its OpenID
  configuration and instance discovery (as MSAL asks), and the managed-identity endpoints of
  App Service (`IDENTITY_ENDPOINT` with `X-IDENTITY-HEADER`) and of IMDS
  (`/metadata/identity/oauth2/token` with `Metadata: true`; 400 "Identity not found" for the
  client id NO_IDENTITY), the last two over plain HTTP as
  Azure serves them.
- A token is valid only for the vault's resource (`https://127.0.0.1:PORT/.default`) and
  until it expires; each principal (a client id, or the managed identity) has its own set of
  key operations: get, wrapKey, unwrapKey.
- TLS: a CA made at start, its private key never written, name-constrained to 127.0.0.1 and
  localhost, signs the server's certificate; the CA's certificate is written to the state
  directory. A second HTTPS listener presents a certificate from another CA that no one trusts.
- `/_fake/*` is the admin API, guarded by the admin token: keys, versions, principals, the
  resource a key's challenge names, failure injection, a rate limit (429 Throttled, Retry-After).

Use: azure_kv.py STATE_DIR. Prints one JSON line (ports, admin token, tenant, CA file) and
serves on 127.0.0.1 until killed."""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import secrets
import ssl
import sys
import time
import uuid

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from cryptography.x509.oid import NameOID

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Answer, FakeServer, OIDCIssuer, b64url, unb64  # noqa: E402

ALL_OPERATIONS = ["get", "wrapKey", "unwrapKey"]
FEDERATION_AUDIENCE = "api://AzureADTokenExchange"
TOKEN_LIFETIME = 3600
# The user-assigned identity IMDS says this machine does not have (400 "Identity not found").
NO_IDENTITY = "00000000-0000-4000-8000-00000000dead"


def kv_error(status: int, code: str, message: str, inner: str | None = None, headers: dict | None = None) -> Answer:
    body = {"error": {"code": code, "message": message}}
    if inner:
        body["error"]["innererror"] = {"code": inner}
    return Answer(status, body, headers)


def certificates(directory: str, name: str) -> tuple[ssl.SSLContext, str]:
    """A new CA (name-constrained to loopback; its key is dropped) and a server certificate
    for 127.0.0.1 and localhost; returns the server's TLS context and the CA's PEM path."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"DBKey test CA {name} {secrets.token_hex(4)}")])
    loopback = [x509.IPAddress(ipaddress.ip_network("127.0.0.1/32")), x509.DNSName("localhost")]
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.NameConstraints(permitted_subtrees=loopback, excluded_subtrees=None), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
              .issuer_name(ca_name).public_key(server_key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                          x509.DNSName("localhost")]), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    ca_path = os.path.join(directory, f"{name}-ca.pem")
    with open(ca_path, "wb") as file:
        file.write(ca.public_bytes(serialization.Encoding.PEM))
    chain_path = os.path.join(directory, f"{name}-server.pem")
    fd = os.open(chain_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
        file.write(server.public_bytes(serialization.Encoding.PEM))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(chain_path)
    os.unlink(chain_path)
    return context, ca_path


class KeyVault(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.tenant = "72f988bf-0000-4000-8000-" + secrets.token_hex(6)
        self.keys: dict[str, list[dict]] = {}        # name -> versions, newest last
        self.clients: dict[str, dict] = {}            # client id -> {"secret", "operations"}
        self.identity_header = secrets.token_urlsafe(16)
        self.identity_operations = list(ALL_OPERATIONS)
        self.tokens: dict[str, dict] = {}             # token -> {"principal", "audience", "expires"}
        self.port = 0
        self.challenge_resources: dict[str, str] = {}  # key name -> the resource its challenge names
        # The OIDC issuer whose tokens federated credentials trust (a cluster's, in Azure).
        self.issuer = OIDCIssuer()

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # Admin ----------------------------------------------------------------------------------

    def admin(self, command: str, body: dict) -> dict:
        with self.lock:
            if command == "keys":
                self.keys[body["name"]] = []
                return {"kid": self.add_version(body["name"], body.get("kty", "RSA"), body.get("size", 2048))}
            if command == "rotate":
                first = self.keys[body["name"]][0]
                return {"kid": self.add_version(body["name"], first["kty"], first["size"])}
            if command == "enabled":
                for version in self.keys[body["name"]]:
                    if body.get("version") in (None, version["id"]):
                        version["enabled"] = body["enabled"]
                return {}
            if command == "client":
                client_id = body.get("client_id") or str(uuid.uuid4())
                secret = secrets.token_urlsafe(30)
                self.clients[client_id] = {"secret": secret, "operations": body.get("operations", ALL_OPERATIONS)}
                return {"client_id": client_id, "client_secret": secret}
            if command == "federated":
                # A client that trusts the issuer's tokens for `subject`, and such a token (0644,
                # as Kubernetes projects it) in `directory`.
                client_id = str(uuid.uuid4())
                self.clients[client_id] = {"secret": None, "subject": body["subject"],
                                           "operations": body.get("operations", ALL_OPERATIONS)}
                path = os.path.join(body["directory"], f"federated-token-{client_id[:8]}")
                with open(path, "w") as file:
                    file.write(self.federated_token(body.get("token_subject", body["subject"]),
                                                    body.get("lifetime", 3600)))
                os.chmod(path, 0o644)
                return {"client_id": client_id, "token_file": path}
            if command == "certificate":
                return self.certificate_client(body)
            if command == "identity":
                self.identity_operations = body["operations"]
                return {}
            if command == "challenge":
                self.challenge_resources[body["name"]] = body["resource"]
                return {}
            if command == "issued":
                return {"tokens": list(self.tokens)}
        return super().admin(command, body)

    def add_version(self, name: str, kty: str, size: int) -> str:
        if kty == "RSA":
            material = rsa.generate_private_key(public_exponent=65537, key_size=size)
        elif kty == "oct-HSM":
            material = os.urandom(size // 8)
        else:
            raise Answer(400, {"error": f"kty {kty}"})
        version = {"id": secrets.token_hex(16), "kty": kty, "size": size, "material": material, "enabled": True}
        self.keys[name].append(version)
        return f"{self.origin}/keys/{name}/{version['id']}"

    # Entra and managed identity --------------------------------------------------------------

    def federated_token(self, subject: str, lifetime: int) -> str:
        now = int(time.time())
        return self.issuer.sign({"iss": f"{self.origin}/oidc", "sub": subject, "aud": [FEDERATION_AUDIENCE],
                                 "iat": now, "nbf": now, "exp": now + lifetime})

    def check_assertion(self, client: dict, form: dict) -> None:
        """A federated credential's assertion: the issuer's signature, the audience, the subject
        the client trusts, unexpired."""
        refused = Answer(401, {"error": "invalid_client", "error_description":
                               "AADSTS70021: No matching federated identity record found for presented assertion."})
        if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            raise Answer(400, {"error": "invalid_request", "error_description": "AADSTS90014: client_assertion_type"})
        payload = self.issuer.verified_claims(form.get("client_assertion", ""))
        if payload is None:
            raise Answer(401, {"error": "invalid_client", "error_description":
                               "AADSTS50027: JWT token is invalid or malformed."})
        audiences = payload.get("aud") if isinstance(payload.get("aud"), list) else [payload.get("aud")]
        if FEDERATION_AUDIENCE not in audiences or payload.get("sub") != client.get("subject"):
            raise refused
        if payload.get("exp", 0) < time.time():
            raise Answer(401, {"error": "invalid_client", "error_description":
                               "AADSTS700024: Client assertion is not within its valid time range."})

    def certificate_client(self, body: dict) -> dict:
        """A client that proves itself with a certificate, and the certificate's file (0600) in
        `directory`, as a service principal's owner exports it: `format` `pem` (PKCS #8 key and
        certificates), `pem-rsa` (a PKCS #1 key), `pem-encrypted` or `pkcs12`, with `password`;
        `chain` has an intermediate CA sign the certificate and puts the CA after it; `key` `ec`
        makes an EC key (which Entra does not take for a client assertion); `registered` false
        registers another certificate than the one written."""
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import pkcs12

        def certificate(name: str, key, issuer_name: str, issuer_key, ca: bool) -> x509.Certificate:
            now = datetime.datetime.now(datetime.timezone.utc)
            return (x509.CertificateBuilder()
                    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                    .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
                    .public_key(key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(now - datetime.timedelta(minutes=5))
                    .not_valid_after(now + datetime.timedelta(days=30))
                    .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                    .sign(issuer_key, hashes.SHA256()))

        client_id = str(uuid.uuid4())
        key = (ec.generate_private_key(ec.SECP256R1()) if body.get("key") == "ec"
               else rsa.generate_private_key(public_exponent=65537, key_size=2048))
        extra: list[x509.Certificate] = []
        if body.get("chain"):
            ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            leaf = certificate(f"dbkey-{client_id[:8]}", key, "dbkey-intermediate", ca_key, False)
            extra = [certificate("dbkey-intermediate", ca_key, "dbkey-intermediate", ca_key, True)]
        else:
            leaf = certificate(f"dbkey-{client_id[:8]}", key, f"dbkey-{client_id[:8]}", key, False)
        registered = leaf
        if body.get("registered") is False:
            other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            registered = certificate("dbkey-other", other, "dbkey-other", other, False)
        self.clients[client_id] = {"secret": None, "certificate": registered,
                                   "operations": body.get("operations", ALL_OPERATIONS)}
        password = body.get("password", "").encode()
        encryption = (serialization.BestAvailableEncryption(password) if password
                      else serialization.NoEncryption())
        form = body.get("format", "pem")
        certificates_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [leaf] + extra)
        if form == "pkcs12":
            data = pkcs12.serialize_key_and_certificates(b"dbkey", key, leaf, extra or None, encryption)
        else:
            key_format = (serialization.PrivateFormat.TraditionalOpenSSL if form == "pem-rsa"
                          else serialization.PrivateFormat.PKCS8)
            data = key.private_bytes(serialization.Encoding.PEM, key_format, encryption) + certificates_pem
        path = os.path.join(body["directory"], f"client-{client_id[:8]}.{'pfx' if form == 'pkcs12' else 'pem'}")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        return {"client_id": client_id, "path": path,
                "thumbprint": leaf.fingerprint(hashes.SHA1()).hex().upper()}

    def check_certificate_assertion(self, client: dict, form: dict, token_url: str) -> None:
        """A certificate's client assertion, as Entra checks it."""
        def refused(code: str, text: str) -> Answer:
            return Answer(401, {"error": "invalid_client", "error_description": f"{code}: {text}"})
        if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            raise Answer(400, {"error": "invalid_request", "error_description": "AADSTS90014: client_assertion_type"})
        certificate: x509.Certificate = client["certificate"]
        try:
            header_text, body_text, signature = form.get("client_assertion", "").split(".")
            header = json.loads(unb64(header_text, url=True))
            claims = json.loads(unb64(body_text, url=True))
        except ValueError:
            raise refused("AADSTS50027", "JWT token is invalid or malformed.")
        thumbprints = {"x5t": b64url(certificate.fingerprint(hashes.SHA1())),
                       "x5t#S256": b64url(certificate.fingerprint(hashes.SHA256()))}
        # MSAL pads the thumbprint's base64url; Entra takes it either way.
        if not any(str(header.get(name, "")).rstrip("=") == value for name, value in thumbprints.items()):
            raise refused("AADSTS700027", "The certificate with identifier used to sign the client assertion is "
                          "not registered on application.")
        if "x5c" in header and (not isinstance(header["x5c"], list) or not header["x5c"]
                                or unb64(header["x5c"][0]) != certificate.public_bytes(serialization.Encoding.DER)):
            raise refused("AADSTS700027", "The x5c chain does not start with the registered certificate.")
        algorithm = header.get("alg")
        scheme = (padding.PKCS1v15() if algorithm == "RS256" else
                  padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32) if algorithm == "PS256" else None)
        try:
            if scheme is None:
                raise InvalidSignature()
            certificate.public_key().verify(unb64(signature, url=True), f"{header_text}.{body_text}".encode(),
                                            scheme, hashes.SHA256())
        except (InvalidSignature, ValueError, TypeError):
            raise refused("AADSTS700027", "Client assertion failed signature validation.")
        if claims.get("aud") != token_url:
            raise refused("AADSTS700212", f"No matching audience: {claims.get('aud')}")
        if claims.get("iss") != form.get("client_id") or claims.get("sub") != form.get("client_id"):
            raise refused("AADSTS700021", "Client assertion application identifier doesn't match 'client_id' "
                          "parameter.")
        now = time.time()
        if not (claims.get("nbf", now) <= now + 300 and now < claims.get("exp", 0) <= now + 86400):
            raise refused("AADSTS700024", "Client assertion is not within its valid time range.")
        if not claims.get("jti"):
            raise refused("AADSTS700023", "The client assertion has no jti.")

    def issue(self, principal: str, resource: str) -> dict:
        token = "eyJ0eXAiOiJKV1QifQ.fake-" + secrets.token_urlsafe(32)
        expires = int(time.time()) + TOKEN_LIFETIME
        self.tokens[token] = {"principal": principal, "audience": resource.rstrip("/"), "expires": expires}
        return {"token_type": "Bearer", "access_token": token, "expires_in": TOKEN_LIFETIME,
                "ext_expires_in": TOKEN_LIFETIME, "expires_on": str(expires), "resource": resource}

    def entra(self, request) -> dict | None:
        path = request.path
        tenant_path = re.fullmatch(r"/([^/]+)/(v2\.0/\.well-known/openid-configuration|oauth2/v2\.0/token)", path)
        if path == "/common/discovery/instance":
            return {"tenant_discovery_endpoint":
                    f"{self.origin}/{self.tenant}/v2.0/.well-known/openid-configuration",
                    "api-version": "1.1", "metadata": []}
        if tenant_path and tenant_path.group(2).startswith("v2.0"):
            base = f"{self.origin}/{tenant_path.group(1)}"
            return {"token_endpoint": f"{base}/oauth2/v2.0/token", "issuer": f"{base}/v2.0",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode"}
        if tenant_path and request.method == "POST":
            if tenant_path.group(1) != self.tenant:
                raise Answer(400, {"error": "invalid_request",
                                   "error_description": f"AADSTS90002: Tenant '{tenant_path.group(1)}' not found."})
            form = request.form()
            client = self.clients.get(form.get("client_id", ""))
            if form.get("grant_type") != "client_credentials":
                raise Answer(400, {"error": "unsupported_grant_type", "error_description": "AADSTS70003"})
            if not client:
                raise Answer(400, {"error": "unauthorized_client", "error_description":
                                   "AADSTS700016: Application not found in the directory."})
            if "client_assertion" in form and client.get("subject"):
                self.check_assertion(client, form)
            elif "client_assertion" in form and client.get("certificate"):
                self.check_certificate_assertion(client, form, f"{self.origin}{path}")
            elif not client["secret"] or not secrets.compare_digest(form.get("client_secret", ""), client["secret"]):
                raise Answer(401, {"error": "invalid_client",
                                   "error_description": "AADSTS7000215: Invalid client secret provided."})
            scope = form.get("scope", "")
            if not scope.endswith("/.default"):
                raise Answer(400, {"error": "invalid_scope", "error_description": "AADSTS1002012"})
            return self.issue(form["client_id"], scope.removesuffix("/.default"))
        if path == "/msi/token":
            if not secrets.compare_digest(request.headers.get("x-identity-header", ""), self.identity_header):
                raise Answer(401, {"statusCode": 401, "message": "X-IDENTITY-HEADER is missing or wrong."})
            return self.issue("managed-identity", request.query.get("resource", [""])[0])
        if path == "/metadata/identity/oauth2/token":
            if request.headers.get("metadata") != "true":
                raise Answer(400, {"error": "invalid_request", "error_description": "Required metadata header not "
                                   "specified"})
            if request.query.get("client_id", [""])[0] == NO_IDENTITY:
                # What IMDS answers on a machine without that user-assigned identity.
                raise Answer(400, {"error": "invalid_request",
                                   "error_description": "Identity not found"})
            return self.issue("managed-identity", request.query.get("resource", [""])[0])
        return None

    # Key Vault ------------------------------------------------------------------------------

    def authorize(self, request, name: str, operation: str) -> None:
        token = request.bearer()
        resource = self.challenge_resources.get(name, self.origin)
        challenge = {"WWW-Authenticate": f'Bearer authorization="{self.origin}/{self.tenant}", '
                                         f'resource="{resource}"'}
        if token is None:
            raise kv_error(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.",
                           headers=challenge)
        entry = self.tokens.get(token)
        if not entry or entry["expires"] < time.time() or entry["audience"] != self.origin:
            raise kv_error(401, "Unauthorized", "AKV10022: Invalid audience or expired token.", headers=challenge)
        allowed = (self.identity_operations if entry["principal"] == "managed-identity"
                   else self.clients.get(entry["principal"], {}).get("operations", []))
        if operation not in allowed:
            raise kv_error(403, "Forbidden", f"Caller is not authorized to perform action on resource. Action: "
                           f"'Microsoft.KeyVault/vaults/keys/{operation}/action'", inner="ForbiddenByRbac")

    def resource_manager(self, request) -> dict | None:
        """The little of Azure Resource Manager the Azure CLI asks for to register this cloud
        and to sign in: the cloud's endpoints, and the (empty) subscriptions of a principal."""
        arm = f"{self.origin}/arm/"
        if request.path == "/arm/metadata/endpoints":
            return {"name": "DBKeyFake", "resourceManager": arm, "suffixes": {},
                    "authentication": {"loginEndpoint": self.origin, "audiences": [arm], "tenant": "common",
                                       "identityProvider": "AAD"}}
        if request.path in ("/arm/subscriptions", "/arm/tenants"):
            grant = self.tokens.get(request.bearer() or "")
            if not grant or grant["audience"] != arm.rstrip("/") or grant["expires"] < time.time():
                raise Answer(401, {"error": {"code": "InvalidAuthenticationToken", "message": "no token for ARM"}})
            tenants = [{"id": f"/tenants/{self.tenant}", "tenantId": self.tenant}]
            return {"value": tenants if request.path == "/arm/tenants" else []}
        return None

    def route(self, request) -> dict:
        answer = self.entra(request)
        if answer is None:
            answer = self.resource_manager(request)
        if answer is not None:
            return answer
        match = re.fullmatch(r"/keys/([A-Za-z0-9-]+)(?:/([0-9a-f]{32})?)?(/wrapkey|/unwrapkey)?/?", request.path)
        if not match:
            raise kv_error(404, "NotFound", f"No route for {request.path}.")
        if not request.query.get("api-version"):
            raise kv_error(400, "BadParameter", "The api-version query parameter is missing.")
        name, version_id, operation = match.groups()
        method = {None: "get", "/wrapkey": "wrapKey", "/unwrapkey": "unwrapKey"}[operation]
        if (request.method == "GET") != (method == "get"):
            raise kv_error(405, "BadParameter", "Method not allowed.")
        self.authorize(request, name, method)
        with self.lock:
            versions = self.keys.get(name, [])
            version = next((v for v in versions if v["id"] == version_id), None) if version_id else \
                (versions[-1] if versions else None)
            if version is None:
                raise kv_error(404, "KeyNotFound", f"A key with (name/id) {name}/{version_id or ''} was not found in "
                               "this key vault.")
            kid = f"{self.origin}/keys/{name}/{version['id']}"
            if method == "get":
                return self.describe(kid, version)
            if not version["enabled"]:
                raise kv_error(403, "Forbidden", f"Operation {method} is not allowed on a disabled key.",
                               inner="KeyDisabled")
            body = request.json()
            try:
                value = unb64(body.get("value", ""), url=True)
            except ValueError:
                raise kv_error(400, "BadParameter", "The value is not base64url.")
            algorithm = body.get("alg", "")
            return {"kid": kid, "value": b64url(self.crypt(version, algorithm, value, method == "wrapKey"))}

    @staticmethod
    def describe(kid: str, version: dict) -> dict:
        key = {"kid": kid, "kty": version["kty"], "key_ops": ["wrapKey", "unwrapKey", "encrypt", "decrypt"]}
        if version["kty"] == "RSA":
            numbers = version["material"].public_key().public_numbers()
            key["n"] = b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"))
            key["e"] = b64url(numbers.e.to_bytes(3, "big"))
        return {"key": key, "attributes": {"enabled": version["enabled"], "recoveryLevel": "Recoverable+Purgeable"}}

    @staticmethod
    def crypt(version: dict, algorithm: str, value: bytes, wrap: bool) -> bytes:
        material = version["material"]
        if version["kty"] == "RSA" and algorithm in ("RSA-OAEP-256", "RSA-OAEP"):
            digest = hashes.SHA256() if algorithm == "RSA-OAEP-256" else hashes.SHA1()
            oaep = padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)
            try:
                return material.public_key().encrypt(value, oaep) if wrap else material.decrypt(value, oaep)
            except ValueError:
                raise kv_error(400, "BadParameter", "The parameter is incorrect: decryption failed.")
        if version["kty"] == "oct-HSM" and algorithm == "A256KW" and len(material) == 32:
            try:
                return aes_key_wrap(material, value) if wrap else aes_key_unwrap(material, value)
            except (InvalidUnwrap, ValueError):
                raise kv_error(400, "BadParameter", "The parameter is incorrect: unwrap failed.")
        raise kv_error(400, "BadParameter", f"Algorithm {algorithm} is not supported for a {version['kty']} key.")

    def failure_body(self, status: int) -> dict:
        code = {429: "Throttled", 503: "ServiceUnavailable"}.get(status, "InternalServerError")
        return {"error": {"code": code, "message": "injected failure"}}

    def throttle_body(self) -> dict:
        # Key Vault's words when a vault's service limit is reached.
        return {"error": {"code": "Throttled", "message": "Request was not processed because too many requests "
                          "were received. Reason: VaultRequestTypeLimitReached"}}


def main() -> None:
    directory = sys.argv[1]
    fake = KeyVault()
    context, ca = certificates(directory, "trusted")
    fake.port = fake.listen(context)
    untrusted_context, _ = certificates(directory, "untrusted")
    untrusted_port = fake.listen(untrusted_context)
    http_port = fake.listen()
    print(json.dumps({"port": fake.port, "untrusted_port": untrusted_port, "http_port": http_port,
                      "admin_token": fake.admin_token, "tenant": fake.tenant, "ca_file": ca,
                      "identity_header": fake.identity_header}), flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
