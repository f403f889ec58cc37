#!/usr/bin/env python3
"""Which credential azure-identity's DefaultAzureCredential takes in this environment, and
whether the token it gets opens a key: the other side of DBKey's Azure credential tests.

Use: azure_credential.py VAULT_ORIGIN KEY_NAME. Prints {"credential": the class of the credential
that gave the token, "status": the HTTP status of GET /keys/KEY_NAME with it}. The token itself
is never printed. The authority is AZURE_AUTHORITY_HOST, the CA REQUESTS_CA_BUNDLE."""
import json
import ssl
import sys
import urllib.error
import urllib.request

from azure.identity import DefaultAzureCredential

origin, name = sys.argv[1:3]
credential = DefaultAzureCredential(disable_instance_discovery=True)
token = credential.get_token(f"{origin}/.default")
request = urllib.request.Request(f"{origin}/keys/{name}?api-version=7.4",
                                 headers={"Authorization": f"Bearer {token.token}"})
context = ssl.create_default_context(cafile=__import__("os").environ["REQUESTS_CA_BUNDLE"])
try:
    with urllib.request.urlopen(request, context=context) as answer:
        status = answer.status
except urllib.error.HTTPError as answer:
    status = answer.code
print(json.dumps({"credential": type(credential._successful_credential).__name__, "status": status}))
