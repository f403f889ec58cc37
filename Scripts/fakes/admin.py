#!/usr/bin/env python3
"""Sends one admin command to a fake KMS and prints its JSON answer.

Use: admin.py BASE_URL ADMIN_TOKEN COMMAND [JSON_BODY] [CA_FILE]"""
import json
import ssl
import sys
import urllib.request

base, token, command = sys.argv[1:4]
body = (sys.argv[4] if len(sys.argv) > 4 else "{}").encode()
context = ssl.create_default_context(cafile=sys.argv[5]) if len(sys.argv) > 5 else None
request = urllib.request.Request(f"{base}/_fake/{command}", data=body, headers={"X-Fake-Admin": token})
with urllib.request.urlopen(request, context=context) as answer:
    print(json.dumps(json.load(answer)))
