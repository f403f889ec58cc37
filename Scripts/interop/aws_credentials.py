#!/usr/bin/env python3
"""Which credentials boto3 resolves in this environment, as the other side of the credential
chain tests: prints {"method": botocore's name for the source, "access_key": the access key id,
"secret_sha256": SHA-256 of the secret key in hex, "token": whether there is a session token}.
The secret itself is never printed. Test credentials only."""
import hashlib
import json

import boto3

credentials = boto3.Session().get_credentials()
if credentials is None:
    print(json.dumps({"method": None}))
else:
    frozen = credentials.get_frozen_credentials()
    print(json.dumps({"method": credentials.method, "access_key": frozen.access_key,
                      "secret_sha256": hashlib.sha256(frozen.secret_key.encode()).hexdigest(),
                      "token": frozen.token is not None}))
