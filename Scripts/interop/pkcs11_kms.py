#!/usr/bin/env python3
"""An independent implementation of DBKey's PKCS#11 wrap format, with python-pkcs11, for the
interop tests. Reads one JSON request on stdin, prints one JSON answer.

  {"op": "unwrap", "blob": BASE64, "context_hex": HEX} -> {"plaintext_hex": HEX}
  {"op": "wrap", "plaintext_hex": HEX, "context_hex": HEX} -> {"blob": BASE64}

The token, key and PIN come from DBKEY_TEST_PKCS11_MODULE, _TOKEN, _OBJECT and _PIN_FILE (an
"object" field in the request names another key). The format: base64 of version 1, mechanism 1
(CKM_AES_GCM), a 12-byte IV, then ciphertext and 16-byte tag; the AAD is the context's
canonical encoding.
"""
import base64
import json
import os
import sys

import pkcs11
from pkcs11 import GCMParams, Mechanism, ObjectClass

request = json.load(sys.stdin)
library = pkcs11.lib(os.environ["DBKEY_TEST_PKCS11_MODULE"])
token = library.get_token(token_label=os.environ["DBKEY_TEST_PKCS11_TOKEN"])
with open(os.environ["DBKEY_TEST_PKCS11_PIN_FILE"]) as pin_file:
    pin = pin_file.read().strip()
with token.open(user_pin=pin) as session:
    key = session.get_key(
        object_class=ObjectClass.SECRET_KEY,
        label=request.get("object", os.environ["DBKEY_TEST_PKCS11_OBJECT"]),
    )
    aad = bytes.fromhex(request["context_hex"])
    if request["op"] == "unwrap":
        blob = base64.b64decode(request["blob"])
        assert blob[0] == 1 and blob[1] == 1, "not a version 1 AES-GCM wrap"
        plaintext = key.decrypt(blob[14:], mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(blob[2:14], aad))
        print(json.dumps({"plaintext_hex": plaintext.hex()}))
    elif request["op"] == "wrap":
        iv = session.generate_random(96)
        sealed = key.encrypt(
            bytes.fromhex(request["plaintext_hex"]), mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, aad)
        )
        print(json.dumps({"blob": base64.b64encode(bytes([1, 1]) + iv + sealed).decode()}))
    else:
        sys.exit("unknown op " + request["op"])
