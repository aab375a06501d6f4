"""Run Hourglass's SQL on a current ClickHouse engine, in-process (chdb-core).

Used by tests/e2e/modern_clickhouse.rs. `chdb_run.py --version` prints the
engine's version. `chdb_run.py REQUEST.json` reads:

    {"database": "...",
     "schema": ["CREATE ...", ...],            # must all succeed, in order
     "tables": [{"table": "...", "columns": [...], "path": "/abs/file.tsv"}],
     "statements": [{"sql": "...", "read": true}, ...]}

applies the schema in a fresh session, loads each table from its
TabSeparated file (as the 18.16 server wrote it), then runs the statements in
order, and prints {"version": ..., "results": [{"tsv": ...} | {"error": ...}]}
with one result per statement (reads answer as TabSeparated; writes answer
""). A schema statement that fails stops the run with its text.
"""

import json
import sys
import tempfile

from chdb import session


def version(s):
    return s.query("SELECT version()", "TabSeparated").data().strip()


def main():
    with tempfile.TemporaryDirectory(prefix="hourglass-chdb-") as path:
        s = session.Session(path)
        if sys.argv[1] == "--version":
            print(version(s))
            return
        with open(sys.argv[1]) as f:
            request = json.load(f)
        for statement in request["schema"]:
            try:
                s.query(statement)
            except Exception as e:  # noqa: BLE001 - the engine's own message is the point
                sys.exit(f"schema statement failed on {version(s)}:\n{statement}\n{e}")
        db = "`" + request["database"].replace("`", "\\`") + "`"
        s.query(f"USE {db}")
        for t in request["tables"]:
            columns = ", ".join(f"`{c}`" for c in t["columns"])
            s.query(
                f"INSERT INTO {t['table']} ({columns}) FROM INFILE '{t['path']}' FORMAT TabSeparated"
            )
        results = []
        for st in request["statements"]:
            try:
                if st["read"]:
                    out = s.query(st["sql"], "TabSeparated").bytes()
                    results.append({"tsv": out.decode("utf-8", "replace")})
                else:
                    s.query(st["sql"])
                    results.append({"tsv": ""})
            except Exception as e:  # noqa: BLE001
                results.append({"error": str(e)})
        print(json.dumps({"version": version(s), "results": results}))
        s.close()


if __name__ == "__main__":
    main()
