#!/usr/bin/env python3
"""Microsoft's official Key Vault client (azure-keyvault-keys' CryptographyClient, with
azure-identity's ClientSecretCredential) against a Key Vault endpoint, as the other side of
the interop tests.

Reads one JSON request on stdin and writes the answer on stdout:
    {"op": "wrap", "key_id": URL, "alg": ALG, "value_hex": HEX} -> {"value": B64URL, "key_id": URL}
    {"op": "unwrap", "key_id": URL, "alg": ALG, "value": B64URL} -> {"value_hex": HEX}
The credential comes from AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET and
AZURE_AUTHORITY_HOST; the CA the server's certificate chains to from REQUESTS_CA_BUNDLE. The
client reaches the key through the vault's WWW-Authenticate challenge, as it does in Azure, and
must not be allowed to read the key (the caller's role lacks `get`), so that it cannot wrap
locally with the public key: every operation is the service's. Test keys only."""
import base64
import json
import os
import sys

from azure.identity import ClientSecretCredential
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

env = os.environ
credential = ClientSecretCredential(
    env["AZURE_TENANT_ID"], env["AZURE_CLIENT_ID"], env["AZURE_CLIENT_SECRET"],
    authority=env["AZURE_AUTHORITY_HOST"], disable_instance_discovery=True)
request = json.load(sys.stdin)
# The SDK accepts a challenge only from a resource whose domain the vault's host ends with
# (".vault.azure.net"); no name ends with ".127.0.0.1", so that one check is off here. DBKey's own
# provider makes the same check, and its tests cover it.
client = CryptographyClient(request["key_id"], credential, verify_challenge_resource=False)
algorithm = KeyWrapAlgorithm(request["alg"])


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


if request["op"] == "wrap":
    result = client.wrap_key(algorithm, bytes.fromhex(request["value_hex"]))
    print(json.dumps({"value": base64.urlsafe_b64encode(result.encrypted_key).decode().rstrip("="),
                      "key_id": result.key_id}))
elif request["op"] == "unwrap":
    result = client.unwrap_key(algorithm, unb64url(request["value"]))
    print(json.dumps({"value_hex": result.key.hex()}))
else:
    sys.exit("unknown op")
