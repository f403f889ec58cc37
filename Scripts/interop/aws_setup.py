#!/usr/bin/env python3
"""Prepares a moto server started with INITIAL_NO_AUTH_ACTION_COUNT=4: the four free calls
create an IAM user, a policy allowing kms:*, its attachment and an access key; from then on
every request must carry a valid SigV4 signature. Then, signed with that key, it creates two
KMS keys and an alias. Prints shell `export` lines for the tests."""
import json
import sys

import boto3

endpoint = sys.argv[1]
region = "us-east-1"
bootstrap = dict(endpoint_url=endpoint, region_name=region,
                 aws_access_key_id="AKIAIOSFODNN7EXAMPLE", aws_secret_access_key="bootstrap-unused-secret")
iam = boto3.client("iam", **bootstrap)
iam.create_user(UserName="dbkey-tests")
policy = iam.create_policy(
    PolicyName="dbkey-kms",
    PolicyDocument=json.dumps({"Version": "2012-10-17",
                               "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}))
iam.attach_user_policy(UserName="dbkey-tests", PolicyArn=policy["Policy"]["Arn"])
access = iam.create_access_key(UserName="dbkey-tests")["AccessKey"]

kms = boto3.client("kms", endpoint_url=endpoint, region_name=region,
                   aws_access_key_id=access["AccessKeyId"], aws_secret_access_key=access["SecretAccessKey"])
first = kms.create_key(Description="dbkey tests")["KeyMetadata"]["Arn"]
second = kms.create_key(Description="dbkey tests, rewrap target")["KeyMetadata"]["Arn"]
kms.create_alias(AliasName="alias/dbkey-test", TargetKeyId=first)

for name, value in [("ENDPOINT", endpoint), ("REGION", region), ("ACCESS_KEY_ID", access["AccessKeyId"]),
                    ("SECRET_ACCESS_KEY", access["SecretAccessKey"]), ("KEY_ARN", first),
                    ("SECOND_KEY_ARN", second), ("ALIAS", "alias/dbkey-test")]:
    print(f"export DBKEY_TEST_AWS_{name}='{value}'")
