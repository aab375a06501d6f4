"""Send events through the official Python SDK via a proxy that loses
ingest's answer: the first FAIL_FIRST requests are forwarded to ingest (which
publishes them) but the SDK is told 503 with Retry-After, so it sends the
same messages again, with the same messageId, as a real client behind a
flaky network does.

Usage: segment_retry.py INGEST_URL WRITE_KEY EVENTS_JSON FAIL_FIRST
EVENTS_JSON: a file holding a list of
  {"user": str, "event": str, "value": float|null, "timestamp": iso8601, "message_id": str}
Prints one JSON object: ingest's status per forwarded request, how many
answers were lost and the messageIds they carried (sent twice), and the
errors the SDK reported (it must report none).
"""
import datetime
import http.server
import json
import sys
import threading
import urllib.error
import urllib.request

import segment.analytics as analytics

ingest, write_key, events_path, fail_first = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
events = json.load(open(events_path))
forwarded = []
lost = [0]
lost_ids = []
lock = threading.Lock()


class LossyProxy(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type", "content-encoding", "user-agent")}
        request = urllib.request.Request(ingest + self.path, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                status, answer = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, answer = e.code, e.read()
        with lock:
            forwarded.append(status)
            lose = status == 200 and lost[0] < fail_first
            if lose:
                lost[0] += 1
                lost_ids.extend(m["messageId"] for m in json.loads(body)["batch"])
        if lose:
            self.send_response(503)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LossyProxy)
threading.Thread(target=proxy.serve_forever, daemon=True).start()

errors = []
analytics.write_key = write_key
analytics.host = f"http://127.0.0.1:{proxy.server_address[1]}"
analytics.max_retries = 5
analytics.on_error = lambda error, items: errors.append(str(error))

for e in events:
    ok, _ = analytics.track(
        e["user"],
        e["event"],
        {"value": e["value"]} if e["value"] is not None else {},
        timestamp=datetime.datetime.fromisoformat(e["timestamp"]),
        message_id=e["message_id"],
    )
    if not ok:
        errors.append("queue full")

analytics.flush()
analytics.shutdown()
proxy.shutdown()
print(json.dumps({"forwarded": forwarded, "lost": lost[0], "lost_ids": lost_ids, "errors": errors}))
