"""Shared pieces of the compatibility scripts: environment, MySQL, a participant server that
records calls, and waiting for a transaction at the coordinator."""

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pymysql
import requests
from dtmcli import utils

DTM = os.environ["SETTLE_API"]
MYSQL = urlparse(os.environ["MYSQL_URL"])
BUSI_DB = os.environ["BUSI_DB"]

CALLS = []
CALLS_LOCK = threading.Lock()


def connect():
    return pymysql.connect(
        host=MYSQL.hostname,
        port=MYSQL.port or 3306,
        user=MYSQL.username or "root",
        password=MYSQL.password or "",
        database=BUSI_DB,
        autocommit=False,
    )


def serve(routes):
    """Serves `routes` ({path: handler(query, body) -> (status, body)}) on 127.0.0.1 and
    returns the base URL. Every call is recorded in CALLS as (path, gid, branch_id, op).
    A handler raising DTMFailureError answers 409; any other exception answers 500."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, status, body):
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.do_POST()

        def do_POST(self):
            url = urlparse(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            body = json.loads(raw) if raw else {}
            with CALLS_LOCK:
                CALLS.append((url.path, q.get("gid"), q.get("branch_id"), q.get("op")))
            handler = routes.get(url.path)
            if handler is None:
                return self.answer(404, "no such route")
            try:
                status, text = handler(q, body)
                return self.answer(status, text)
            except utils.DTMFailureError as e:
                return self.answer(409, json.dumps({"dtm_result": "FAILURE", "message": str(e)}))
            except Exception as e:  # noqa: BLE001 - any other error is retried by the coordinator
                return self.answer(500, json.dumps({"message": repr(e)}))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, "http://127.0.0.1:%d" % server.server_address[1]


SUCCESS = (200, '{"dtm_result":"SUCCESS"}')


def wait_status(gid, timeout=20):
    deadline = time.time() + timeout
    status = None
    while time.time() < deadline:
        r = requests.get(DTM + "/query", params={"gid": gid})
        assert r.status_code == 200, r.text
        t = r.json()["transaction"]
        status = t and t["status"]
        if status in ("succeed", "failed"):
            return status
        time.sleep(0.05)
    raise AssertionError("transaction %s still %s after %ss" % (gid, status, timeout))


def calls(gid, op=None, path=None):
    with CALLS_LOCK:
        return [c for c in CALLS if c[1] == gid and (op is None or c[3] == op) and (path is None or c[0] == path)]


def run(main):
    import sys
    import traceback

    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)
