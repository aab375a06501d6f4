"""Read the lake from the local S3 server with pyarrow (Hive partitioning)
and query it with DuckDB, as a data engineer would.

Usage: read_lake.py ENDPOINT BUCKET PREFIX ACCESS_KEY SECRET_KEY
Prints JSON: rows, distinct event ids, the partition values seen, and
DuckDB's count per day.
"""
import json
import sys
from urllib.parse import urlparse

import duckdb
import pyarrow.dataset as ds
from pyarrow import fs

endpoint, bucket, prefix, key, secret = sys.argv[1:6]
url = urlparse(endpoint)
s3 = fs.S3FileSystem(
    access_key=key,
    secret_key=secret,
    endpoint_override=url.netloc,
    scheme=url.scheme,
    region="us-east-1",
)
# List the objects first: s3s-fs answers 500 to the HeadObject pyarrow sends
# for a bare prefix; listing is what every S3 server supports.
root = f"{bucket}/{prefix}"
files = [i.path for i in s3.get_file_info(fs.FileSelector(root, recursive=True)) if i.type == fs.FileType.File]
lake = ds.dataset(files, filesystem=s3, format="parquet", partitioning=ds.partitioning(flavor="hive"), partition_base_dir=root)
events = lake.to_table(columns=["event_id", "timestamp", "dt", "hour", "kafka_partition"])
per_day = duckdb.sql(
    "SELECT dt, count(*) AS n, count(DISTINCT event_id) AS ids FROM events GROUP BY dt ORDER BY dt"
).fetchall()
print(json.dumps({
    "rows": events.num_rows,
    "distinct_ids": len(set(events.column("event_id").to_pylist())),
    "fields": lake.schema.names,
    "days": [[str(d), n, ids] for d, n, ids in per_day],
}))
