"""Send N events of every Segment type through the official Python SDK.

Usage: segment_sdk.py HOST WRITE_KEY N
Prints one JSON object: the messageId of each event by type, and the errors
the SDK reported (it must report none).
"""
import json
import sys

import segment.analytics as analytics

host, write_key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
errors = []
analytics.write_key = write_key
analytics.host = host
analytics.max_retries = 2
analytics.on_error = lambda error, items: errors.append(str(error))

sent = {}


def keep(kind, result):
    ok, msg = result
    sent.setdefault(kind, []).append(msg["messageId"])


for i in range(n):
    user = f"sdk-user-{i % 37}"
    kind = ["track", "page", "screen", "identify", "group", "alias"][i % 6]
    if kind == "track":
        keep(kind, analytics.track(user, "Order Completed", {"value": i * 1.5, "sku": f"s{i}"}))
    elif kind == "page":
        keep(kind, analytics.page(user, "Docs", f"Page {i}", {"path": f"/docs/{i % 9}"}))
    elif kind == "screen":
        keep(kind, analytics.screen(user, "App", f"Screen {i}"))
    elif kind == "identify":
        keep(kind, analytics.identify(user, {"email": f"{user}@example.com"}))
    elif kind == "group":
        keep(kind, analytics.group(user, f"org-{i % 5}", {"plan": "pro"}))
    else:
        keep(kind, analytics.alias(f"anon-{i}", user))

analytics.flush()
analytics.shutdown()
print(json.dumps({"sent": sent, "errors": errors}))
