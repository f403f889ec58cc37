#!/usr/bin/env python3
"""Which credentials google-auth's Application Default Credentials take in this environment,
and whether their token reaches a key: the other side of DBKey's Google credential tests.

Use: gcp_credential.py KMS_ENDPOINT KEY_NAME. Prints {"type": the credentials' class, "status":
the HTTP status of GET /v1/KEY_NAME with the token, "quota_project": the x-goog-user-project
header google-auth adds to the request, or null}. The token is never printed.

google-auth takes two endpoints from constants, not from the file: an authorized_user file's token
endpoint (always oauth2.googleapis.com) and an impersonated_service_account file's IAM endpoint
(the file's URL only names the account). DBKEY_TEST_TOKEN_ENDPOINT and DBKEY_TEST_IAM_ENDPOINT,
when set, replace those constants with the fake's. An external_account file's URLs are used as
written. GOOGLE_CLOUD_PROJECT spares google.auth.default() a project lookup."""
import json
import os
import sys
import urllib.error
import urllib.request

import google.auth
import google.auth.iam
import google.auth.transport.requests
import google.oauth2.credentials

if os.environ.get("DBKEY_TEST_TOKEN_ENDPOINT"):
    google.oauth2.credentials._GOOGLE_OAUTH2_TOKEN_ENDPOINT = os.environ["DBKEY_TEST_TOKEN_ENDPOINT"]
if os.environ.get("DBKEY_TEST_IAM_ENDPOINT"):
    google.auth.iam._IAM_ENDPOINT = os.environ["DBKEY_TEST_IAM_ENDPOINT"] + \
        "/v1/projects/-/serviceAccounts/{}:generateAccessToken"
endpoint, name = sys.argv[1:3]
credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloudkms"])
credentials.refresh(google.auth.transport.requests.Request())
headers: dict = {}
credentials.apply(headers)
request = urllib.request.Request(f"{endpoint}/v1/{name}", headers=headers)
try:
    with urllib.request.urlopen(request) as answer:
        status = answer.status
except urllib.error.HTTPError as answer:
    status = answer.code
print(json.dumps({"type": type(credentials).__module__ + "." + type(credentials).__name__, "status": status,
                  "quota_project": headers.get("x-goog-user-project")}))
