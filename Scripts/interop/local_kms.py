#!/usr/bin/env python3
"""An independent implementation of DBKey's local-provider wrap format, written from the
documentation (the DocC article "Key Management Providers") and DESIGN text with Python's
`cryptography`, so the tests can prove the format is what we publish.

    wrapped = base64( 0x01 || nonce(12) || AES-256-GCM ciphertext(32) || tag(16) )
    AAD     = "dbkey-local-v1" || 0x00 || for each context pair, keys sorted by UTF-8 bytes:
              u32be(len(key)) || key || u32be(len(value)) || value

Reads one JSON request on stdin, writes the answer on stdout:
    {"op": "unwrap", "master_key": B64, "wrapped": B64, "context": {...}} -> {"dek_hex": HEX}
    {"op": "wrap", "master_key": B64, "dek_hex": HEX, "context": {...}}   -> {"wrapped": B64}
    {"op": "kek_id", "master_key": B64}                                   -> {"kek_id": "local:…"}
Test keys only: never feed it a production master key.
"""
import base64
import hashlib
import json
import os
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def aad(context):
    out = b"dbkey-local-v1\x00"
    for key in sorted(context, key=lambda k: k.encode("utf-8")):
        for field in (key, context[key]):
            encoded = field.encode("utf-8")
            out += struct.pack(">I", len(encoded)) + encoded
    return out


def main():
    request = json.load(sys.stdin)
    master = base64.b64decode(request["master_key"], validate=True)
    if request["op"] == "kek_id":
        print(json.dumps({"kek_id": "local:" + hashlib.sha256(master).digest()[:8].hex()}))
    elif request["op"] == "unwrap":
        blob = base64.b64decode(request["wrapped"], validate=True)
        if len(blob) != 61 or blob[0] != 1:
            sys.exit("not a version-1 wrapped key")
        nonce, sealed = blob[1:13], blob[13:]
        dek = AESGCM(master).decrypt(nonce, sealed, aad(request["context"]))
        print(json.dumps({"dek_hex": dek.hex()}))
    elif request["op"] == "wrap":
        nonce = os.urandom(12)
        sealed = AESGCM(master).encrypt(nonce, bytes.fromhex(request["dek_hex"]), aad(request["context"]))
        print(json.dumps({"wrapped": base64.b64encode(b"\x01" + nonce + sealed).decode()}))
    else:
        sys.exit("unknown op")


if __name__ == "__main__":
    main()
