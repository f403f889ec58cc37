#!/usr/bin/env python3
"""Google's official Cloud KMS client (google-cloud-kms, REST transport) against a Cloud KMS
endpoint, as the other side of the interop tests.

Reads one JSON request on stdin and writes the answer on stdout:
    {"op": "encrypt", "key": NAME, "plaintext_hex": HEX, "aad_b64": B64}
        -> {"ciphertext": B64, "name": VERSION}
    {"op": "decrypt", "key": NAME, "ciphertext": B64, "aad_b64": B64} -> {"plaintext_hex": HEX}
The endpoint is DBKEY_TEST_GCP_ENDPOINT; the credentials are the service-account key file in
GOOGLE_APPLICATION_CREDENTIALS (its token_uri names the token endpoint), or, with no such
file, a fixed token in DBKEY_TEST_GCP_TOKEN. Every CRC32C is sent and checked, as Google's
documentation asks of callers. Test keys only."""
import base64
import json
import os
import sys

import google_crc32c
from google.cloud import kms
from google.oauth2 import credentials as oauth2, service_account

env = os.environ
if env.get("GOOGLE_APPLICATION_CREDENTIALS"):
    creds = service_account.Credentials.from_service_account_file(
        env["GOOGLE_APPLICATION_CREDENTIALS"], scopes=["https://www.googleapis.com/auth/cloudkms"])
else:
    creds = oauth2.Credentials(token=env["DBKEY_TEST_GCP_TOKEN"])
client = kms.KeyManagementServiceClient(
    transport="rest", credentials=creds, client_options={"api_endpoint": env["DBKEY_TEST_GCP_ENDPOINT"]})


def crc(data: bytes) -> int:
    return google_crc32c.value(data)


request = json.load(sys.stdin)
aad = base64.b64decode(request.get("aad_b64", ""))
if request["op"] == "encrypt":
    plaintext = bytes.fromhex(request["plaintext_hex"])
    answer = client.encrypt(request={
        "name": request["key"], "plaintext": plaintext, "plaintext_crc32c": crc(plaintext),
        "additional_authenticated_data": aad, "additional_authenticated_data_crc32c": crc(aad)})
    if not answer.verified_plaintext_crc32c or not answer.verified_additional_authenticated_data_crc32c:
        sys.exit("the server did not verify the request's checksums")
    if answer.ciphertext_crc32c != crc(answer.ciphertext):
        sys.exit("the ciphertext's checksum does not match")
    print(json.dumps({"ciphertext": base64.b64encode(answer.ciphertext).decode(), "name": answer.name}))
elif request["op"] == "decrypt":
    ciphertext = base64.b64decode(request["ciphertext"])
    answer = client.decrypt(request={
        "name": request["key"], "ciphertext": ciphertext, "ciphertext_crc32c": crc(ciphertext),
        "additional_authenticated_data": aad, "additional_authenticated_data_crc32c": crc(aad)})
    if answer.plaintext_crc32c != crc(answer.plaintext):
        sys.exit("the plaintext's checksum does not match")
    print(json.dumps({"plaintext_hex": answer.plaintext.hex()}))
else:
    sys.exit("unknown op")
