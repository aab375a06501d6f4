"""How fast DuckDB reads a day of the lake, against the same rows in one
well-formed file (written here by DuckDB itself: zstd, row groups of
122,880 rows).

Usage: duckdb_read.py DAY_GLOB ONE_FILE ROUNDS LABEL=GLOB...
Each LABEL=GLOB is another set of files holding the same day (e.g. the lake
before compaction). Two layouts the lake could have are written here too,
from the same rows, beside ONE_FILE: `hourly` (one file per arrival hour
holding every partition: a cross-partition compaction tier within the hour
folders) and `partition_day` (one file per partition and day: day folders).
Prints JSON: per set, its files, rows, the query's median seconds over
ROUNDS (run in turn with the others) and rows/s.
"""
import json
import os
import statistics
import sys
import time

import duckdb

day, one, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
sets = {"lake": day}
sets.update(dict(a.split("=", 1) for a in sys.argv[4:]))
con = duckdb.connect()
con.execute(
    f"COPY (SELECT * FROM read_parquet('{day}') ORDER BY kafka_partition, kafka_offset) "
    f"TO '{one}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 122880)"
)
sets["one_file"] = one
layouts = os.path.join(os.path.dirname(one), "layouts")
for name, by in [("hourly", "hour(received_at)"), ("partition_day", "kafka_partition")]:
    os.makedirs(os.path.join(layouts, name), exist_ok=True)
    values = con.execute(f"SELECT DISTINCT {by} FROM read_parquet('{day}') ORDER BY 1").fetchall()
    for (value,) in values:
        con.execute(
            f"COPY (SELECT * FROM read_parquet('{day}') WHERE {by} = {value} ORDER BY kafka_partition, kafka_offset) "
            f"TO '{layouts}/{name}/{value:04}.parquet' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 122880)"
        )
    sets[name] = f"{layouts}/{name}/*.parquet"

# A data engineer's query over every column a day's report touches.
QUERY = """
SELECT event, count(*) AS n, count(DISTINCT user_id) AS users, round(sum(value), 2) AS total,
       max(length(properties)) AS longest, min(timestamp) AS first, max(received_at) AS last
FROM read_parquet('{glob}') GROUP BY event ORDER BY event
"""
answers, times = {}, {name: [] for name in sets}
for _ in range(rounds):
    for name, glob in sets.items():
        started = time.perf_counter()
        answers[name] = con.execute(QUERY.format(glob=glob)).fetchall()
        times[name].append(time.perf_counter() - started)
for name in sets:
    if answers[name] != answers["one_file"]:
        sys.exit(f"{name} answers differently from the one file: {answers[name]} vs {answers['one_file']}")
out = {}
for name, glob in sets.items():
    rows = con.execute(f"SELECT count(*) FROM read_parquet('{glob}')").fetchone()[0]
    files = con.execute(f"SELECT count(*) FROM glob('{glob}')").fetchone()[0]
    secs = statistics.median(times[name])
    out[name] = {"files": files, "rows": rows, "seconds": secs, "rows_per_s": rows / secs}
print(json.dumps(out))
