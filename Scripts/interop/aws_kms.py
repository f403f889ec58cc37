#!/usr/bin/env python3
"""boto3 against the test server, as the other side of the interop tests.

Reads one JSON request on stdin and writes the answer on stdout:
    {"op": "decrypt", "blob": B64, "key_id": ARN, "context": {...}} -> {"plaintext_hex": HEX}
    {"op": "generate", "key_id": ARN, "context": {...}} -> {"plaintext_hex": HEX, "blob": B64, "key_id": ARN}
Credentials and endpoint come from the DBKEY_TEST_AWS_* variables. Test keys only."""
import base64
import json
import os
import sys

import boto3

env = os.environ
kms = boto3.client("kms", endpoint_url=env["DBKEY_TEST_AWS_ENDPOINT"], region_name=env["DBKEY_TEST_AWS_REGION"],
                   aws_access_key_id=env["DBKEY_TEST_AWS_ACCESS_KEY_ID"],
                   aws_secret_access_key=env["DBKEY_TEST_AWS_SECRET_ACCESS_KEY"])
request = json.load(sys.stdin)
if request["op"] == "decrypt":
    answer = kms.decrypt(CiphertextBlob=base64.b64decode(request["blob"]), KeyId=request["key_id"],
                         EncryptionContext=request["context"])
    print(json.dumps({"plaintext_hex": answer["Plaintext"].hex()}))
elif request["op"] == "generate":
    answer = kms.generate_data_key(KeyId=request["key_id"], KeySpec="AES_256", EncryptionContext=request["context"])
    print(json.dumps({"plaintext_hex": answer["Plaintext"].hex(),
                      "blob": base64.b64encode(answer["CiphertextBlob"]).decode(), "key_id": answer["KeyId"]}))
else:
    sys.exit("unknown op")
