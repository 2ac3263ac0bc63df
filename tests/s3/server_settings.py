"""Settings of the example server with its blobs on S3 (moto on loopback, for the memory tests).

The endpoint and bucket come from STARKEEP_TEST_S3_ENDPOINT / STARKEEP_TEST_S3_BUCKET;
credentials are the dummy ones the moto fixture puts in the environment.
"""

from __future__ import annotations

import os

from example_project.settings import *  # noqa: F403
from example_project.settings import STARKEEP_SYNC, STORAGES

STORAGES = {
    **STORAGES,
    "s3": {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": os.environ["STARKEEP_TEST_S3_BUCKET"],
            "endpoint_url": os.environ["STARKEEP_TEST_S3_ENDPOINT"],
            "region_name": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            "access_key": os.environ["AWS_ACCESS_KEY_ID"],
            "secret_key": os.environ["AWS_SECRET_ACCESS_KEY"],
            "addressing_style": "path",
            "file_overwrite": True,
            "querystring_auth": True,
        },
    },
}
STARKEEP_SYNC = {**STARKEEP_SYNC, "STORAGE_ALIAS": "s3"}
