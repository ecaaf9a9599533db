"""A Webhook receiver run in a Pod of the product image (mounted from a ConfigMap).

Every POST is appended as one JSON line (headers and body) to /tmp/deliveries.jsonl and
answered 204, unless /tmp/broken exists: then it answers 500, which is how the cluster
tests break the receiver on purpose. Standard library only.
"""

import http.server
import json
import os
import threading

LOG = "/tmp/deliveries.jsonl"  # noqa: S108 - an emptyDir in the Pod
BROKEN = "/tmp/broken"  # noqa: S108
LOCK = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if os.path.exists(BROKEN):
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        line = json.dumps({"headers": dict(self.headers.items()), "body": body.decode()})
        with LOCK, open(LOG, "a", encoding="utf-8") as out:
            out.write(line + "\n")
        self.send_response(204)
        self.end_headers()


def main() -> None:
    http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()  # noqa: S104


if __name__ == "__main__":
    main()
