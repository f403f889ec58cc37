"""What the two fake KMS servers share: a threaded HTTP(S) server on 127.0.0.1 whose handler
routes to methods, an admin API guarded by a token, failure injection, a rate limit that
throttles (429), and JSON answers.

Only for DBKey's tests: keys live in memory, and every listener binds 127.0.0.1."""
from __future__ import annotations

import base64
import hmac
import json
import secrets
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, url: bool = False) -> bytes:
    text = text.strip()
    padded = text + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(padded) if url else base64.b64decode(padded, validate=True)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


class OIDCIssuer:
    """An OpenID Connect issuer's signing key, as a Kubernetes cluster or a CI system holds one:
    it signs RS256 JWTs (the subject tokens of workload identity federation) and verifies them."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def sign(self, claims: dict) -> str:
        header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "issuer"}).encode())
        body = b64url(json.dumps(claims).encode())
        signature = self.key.sign(f"{header}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{header}.{body}.{b64url(signature)}"

    def verified_claims(self, token: str) -> dict | None:
        """The claims of a JWT this issuer signed; `None` for anything else."""
        from cryptography.exceptions import InvalidSignature
        try:
            header, body, signature = token.split(".")
            self.key.public_key().verify(unb64(signature, url=True), f"{header}.{body}".encode(),
                                         padding.PKCS1v15(), hashes.SHA256())
            return json.loads(unb64(body, url=True))
        except (ValueError, InvalidSignature):
            return None


class Failures:
    """The next `count` matching requests are answered with `status` (after `delay` seconds);
    `delay` alone with status 0 only slows them down."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: list[dict] = []

    def add(self, rule: dict) -> None:
        with self.lock:
            self.rules.append({"status": 0, "count": 1, "delay": 0.0, "path": "", "body": None} | rule)

    def take(self, path: str) -> dict | None:
        with self.lock:
            for rule in self.rules:
                if rule["path"] in path and rule["count"] > 0:
                    rule["count"] -= 1
                    if rule["count"] == 0:
                        self.rules.remove(rule)
                    return rule
        return None


class RateLimit:
    """A token bucket over the requests whose path contains `path`: `rate` a second, `burst` at
    once. A request that finds it empty is throttled: answered 429, with `Retry-After:
    retry_after` when that is set."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rule: dict | None = None
        self.throttled = 0
        self.admitted = 0

    def set(self, rule: dict) -> None:
        with self.lock:
            self.rule = None if rule.get("rate") is None else (
                {"burst": 1.0, "retry_after": None, "path": ""} | rule)
            if self.rule:
                self.rule["tokens"], self.rule["at"] = float(self.rule["burst"]), time.monotonic()
            self.throttled = self.admitted = 0

    def take(self, path: str) -> tuple[bool, int | None]:
        """Whether the request may go on; if not, the Retry-After to send."""
        with self.lock:
            rule = self.rule
            if not rule or rule["path"] not in path:
                return True, None
            now = time.monotonic()
            rule["tokens"] = min(float(rule["burst"]), rule["tokens"] + (now - rule["at"]) * rule["rate"])
            rule["at"] = now
            if rule["tokens"] >= 1:
                rule["tokens"] -= 1
                self.admitted += 1
                return True, None
            self.throttled += 1
            return False, rule["retry_after"]


class Answer(Exception):
    """Raised by a route to answer with a status, a JSON body and headers."""

    def __init__(self, status: int, body: dict | str, headers: dict | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


class FakeServer:
    """State shared by every listener of one fake; subclasses define `route(request)`."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.failures = Failures()
        self.rate_limit = RateLimit()
        self.admin_token = secrets.token_urlsafe(24)

    # Routing -------------------------------------------------------------------------------

    def handle(self, request: "Request") -> tuple[int, dict | str, dict]:
        try:
            if request.path.startswith("/_fake/"):
                if not hmac.compare_digest(request.headers.get("x-fake-admin", ""), self.admin_token):
                    raise Answer(403, {"error": "admin token required"})
                return 200, self.admin(request.path[len("/_fake/"):], request.json()), {}
            admitted, retry_after = self.rate_limit.take(request.path)
            if not admitted:
                raise Answer(429, self.throttle_body(),
                             {} if retry_after is None else {"Retry-After": str(retry_after)})
            rule = self.failures.take(request.path)
            if rule:
                time.sleep(rule["delay"])
                if rule["status"]:
                    raise Answer(rule["status"], rule["body"] or self.failure_body(rule["status"]),
                                 rule.get("headers"))
            return 200, self.route(request), {}
        except Answer as answer:
            return answer.status, answer.body, answer.headers

    def admin(self, command: str, body: dict) -> dict:
        if command == "fail":
            self.failures.add(body)
            return {}
        if command == "ratelimit":
            self.rate_limit.set(body)
            return {}
        if command == "ratelimit-stats":
            return {"throttled": self.rate_limit.throttled, "admitted": self.rate_limit.admitted}
        raise Answer(404, {"error": f"no admin command {command}"})

    def route(self, request: "Request") -> dict:
        raise NotImplementedError

    def failure_body(self, status: int) -> dict:
        return {"error": {"code": status, "message": "injected failure"}}

    def throttle_body(self) -> dict:
        return self.failure_body(429)

    # Listeners -----------------------------------------------------------------------------

    def listen(self, context: ssl.SSLContext | None = None) -> int:
        """Serves on 127.0.0.1 on a new port (in a thread) and returns the port."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def respond(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                split = urlsplit(self.path)
                request = Request(self.command, split.path, parse_qs(split.query), self.headers, body)
                status, payload, headers = fake.handle(request)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = respond

            def log_message(self, *args: object) -> None:
                pass

        server = Listener(("127.0.0.1", 0), Handler)
        if context:
            server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server.server_address[1]


class Listener(ThreadingHTTPServer):
    """A thread per connection, and room for the connections that many test processes open at
    once: with socketserver's backlog of 5, a burst of connections overflows the accept queue and
    the kernel answers a client's first bytes with a reset."""

    daemon_threads = True
    request_queue_size = socket.SOMAXCONN


class Request:
    def __init__(self, method: str, path: str, query: dict, headers, body: bytes) -> None:
        self.method, self.path, self.query, self.body = method, path, query, body
        self.headers = {name.lower(): value for name, value in headers.items()}

    def json(self) -> dict:
        if not self.body:
            return {}
        try:
            value = json.loads(self.body)
        except ValueError:
            raise Answer(400, {"error": {"code": 400, "message": "Invalid JSON payload received.",
                                         "status": "INVALID_ARGUMENT"}})
        if not isinstance(value, dict):
            raise Answer(400, {"error": {"code": 400, "message": "The body is not an object.",
                                         "status": "INVALID_ARGUMENT"}})
        return value

    def form(self) -> dict[str, str]:
        return {name: values[0] for name, values in parse_qs(self.body.decode()).items()}

    def bearer(self) -> str | None:
        value = self.headers.get("authorization", "")
        return value[len("Bearer "):] if value.startswith("Bearer ") else None
