#!/usr/bin/env python3
"""Opens a DBKey escrow slot with an independent HPKE implementation (pyhpke) and OpenSSL's
reading of the private key (via cryptography), following only the description in the DocC article "Key Slots and Recovery":

  suite  DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM (RFC 9180, base mode)
  info   "dbkey-escrow-v1" || 0x00 || canonical encoding of the encryption context
         (for each pair in the order of the keys' UTF-8 bytes: u32-BE length || key,
         u32-BE length || value)
  aad    the database salt (the .key's cipher.salt, 16 bytes) || the data key's version (u32-BE)
  slot   base64(encapsulated key (32) || ciphertext (32) || tag (16))

Use: escrow_open.py KEY_FILE PRIVATE_KEY_PEM SLOT_NUMBER [pending]. Prints the data key in hex.
"""
import base64
import json
import struct
import sys

from cryptography.hazmat.primitives import serialization
from pyhpke import AEADId, CipherSuite, KDFId, KEMId


def canonical(context):
    out = b""
    for key in sorted(context, key=lambda k: k.encode()):
        for field in (key, context[key]):
            data = field.encode()
            out += struct.pack(">I", len(data)) + data
    return out


def main():
    key_file_path, private_pem, slot_number = sys.argv[1], sys.argv[2], int(sys.argv[3])
    key_file = json.load(open(key_file_path))
    record, version = key_file, key_file["version"]
    if len(sys.argv) > 4 and sys.argv[4] == "pending":
        record, version = key_file["pending"], key_file["pending"]["version"]
    slot = next(s for s in record["slots"] if s["slot"] == slot_number)
    salt = base64.b64decode(((record.get("cipher") or key_file["cipher"]))["salt"])
    info = b"dbkey-escrow-v1\x00" + canonical(key_file.get("encryption_context") or {})
    aad = salt + struct.pack(">I", version)
    blob = base64.b64decode(slot["encrypted_dek"])
    private = serialization.load_pem_private_key(open(private_pem, "rb").read(), password=None)
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    suite = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES256_GCM)
    recipient = suite.create_recipient_context(blob[:32], suite.kem.deserialize_private_key(raw), info=info)
    sys.stdout.write(recipient.open(blob[32:], aad=aad).hex())


main()
