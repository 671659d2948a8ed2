"""DTM's Python client (dtmcli, from PyPI) runs TCC against Settle, unchanged.

Run by tests/tests/dtmcli.rs with:
  SETTLE_API   the coordinator's DTM API, e.g. http://127.0.0.1:36789/api/dtmsvr
  MYSQL_URL    mysql://user[:password]@host:port of the server holding dtm_barrier.barrier
  BUSI_DB      a database of this test's own for the business tables

Participants are served here with the standard library's HTTP server; the barrier ones use
dtmcli's BranchBarrier on PyMySQL, exactly as a DTM user would.
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pymysql
import requests
from dtmcli import barrier, tcc, utils

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


def setup_accounts():
    conn = connect()
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE account (id INT PRIMARY KEY, balance INT NOT NULL, "
            "frozen INT NOT NULL DEFAULT 0, incoming INT NOT NULL DEFAULT 0)"
        )
        cur.execute("INSERT INTO account (id, balance) VALUES (1, 100), (2, 0)")
    conn.commit()
    conn.close()


def accounts():
    conn = connect()
    with conn.cursor() as cur:
        cur.execute("SELECT id, balance, frozen, incoming FROM account ORDER BY id")
        rows = cur.fetchall()
    conn.close()
    return [tuple(r) for r in rows]


def barrier_business(op, amount):
    """The business SQL of each barrier branch: account 1 pays, account 2 receives."""

    def run(cur):
        if op == "out_try":
            if cur.execute(
                "UPDATE account SET balance = balance - %s, frozen = frozen + %s "
                "WHERE id = 1 AND balance >= %s",
                (amount, amount, amount),
            ) == 0:
                raise utils.DTMFailureError("insufficient balance")
        elif op == "out_confirm":
            cur.execute("UPDATE account SET frozen = frozen - %s WHERE id = 1", (amount,))
        elif op == "out_cancel":
            cur.execute(
                "UPDATE account SET balance = balance + %s, frozen = frozen - %s WHERE id = 1",
                (amount, amount),
            )
        elif op == "in_try":
            cur.execute("UPDATE account SET incoming = incoming + %s WHERE id = 2", (amount,))
        elif op == "in_confirm":
            cur.execute(
                "UPDATE account SET balance = balance + %s, incoming = incoming - %s WHERE id = 2",
                (amount, amount),
            )
        elif op == "in_cancel":
            cur.execute("UPDATE account SET incoming = incoming - %s WHERE id = 2", (amount,))
        else:
            raise Exception("unknown op " + op)

    return run


class Participant(BaseHTTPRequestHandler):
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
        body = json.loads(self.rfile.read(length) or b"{}")
        with CALLS_LOCK:
            CALLS.append((url.path, q.get("gid"), q.get("branch_id"), q.get("op")))
        try:
            if url.path == "/plain/fail_try":
                return self.answer(409, '{"dtm_result":"FAILURE"}')
            if url.path.startswith("/plain/"):
                return self.answer(200, '{"dtm_result":"SUCCESS"}')
            if url.path.startswith("/barrier/"):
                op = url.path[len("/barrier/"):]
                bb = barrier.BranchBarrier(q["trans_type"], q["gid"], q["branch_id"], q["op"])
                conn = connect()
                try:
                    with conn.cursor() as cur:
                        bb.call(cur, barrier_business(op, body["amount"]))
                finally:
                    conn.close()
                return self.answer(200, '{"dtm_result":"SUCCESS"}')
            return self.answer(404, "no such route")
        except utils.DTMFailureError as e:
            return self.answer(409, json.dumps({"dtm_result": "FAILURE", "message": str(e)}))
        except Exception as e:  # noqa: BLE001 - any other error is retried by the coordinator
            return self.answer(500, json.dumps({"message": repr(e)}))


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


def calls(gid, op):
    with CALLS_LOCK:
        return [c for c in CALLS if c[1] == gid and c[3] == op]


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Participant)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = "http://127.0.0.1:%d" % server.server_address[1]
    plain = lambda op: base + "/plain/" + op  # noqa: E731
    setup_accounts()

    # 1. A passing transfer: both branches confirmed, in reverse order.
    gid = utils.gen_gid(DTM)

    def ok(t):
        t.call_branch({"amount": 30}, plain("try"), plain("confirm"), plain("cancel"))
        t.call_branch({"amount": 30}, plain("try"), plain("confirm"), plain("cancel"))

    assert tcc.tcc_global_transaction(DTM, gid, ok) == gid
    assert wait_status(gid) == "succeed"
    assert [c[2] for c in calls(gid, "confirm")] == ["02", "01"], calls(gid, "confirm")
    assert calls(gid, "cancel") == []
    print("passing transfer: succeed")

    # 2. A failing Try: dtmcli aborts, Settle cancels every registered branch.
    gid = utils.gen_gid(DTM)

    def failing(t):
        t.call_branch({"amount": 30}, plain("try"), plain("confirm"), plain("cancel"))
        t.call_branch({"amount": 30}, plain("fail_try"), plain("confirm"), plain("cancel"))

    assert tcc.tcc_global_transaction(DTM, gid, failing) == ""
    assert wait_status(gid) == "failed"
    assert sorted(c[2] for c in calls(gid, "cancel")) == ["01", "02"], calls(gid, "cancel")
    assert calls(gid, "confirm") == []
    print("failing try: failed, both branches cancelled")

    # 3. A transfer whose participants use dtmcli's barrier on MySQL.
    bar = lambda op: base + "/barrier/" + op  # noqa: E731
    gid = utils.gen_gid(DTM)

    def transfer(amount):
        def run(t):
            t.call_branch({"amount": amount}, bar("in_try"), bar("in_confirm"), bar("in_cancel"))
            t.call_branch({"amount": amount}, bar("out_try"), bar("out_confirm"), bar("out_cancel"))

        return run

    assert tcc.tcc_global_transaction(DTM, gid, transfer(30)) == gid
    assert wait_status(gid) == "succeed"
    assert accounts() == [(1, 70, 0, 0), (2, 30, 0, 0)], accounts()
    print("barrier transfer: succeed, balances 70 and 30")

    # 4. With the barrier, a Try that fails (insufficient balance) leaves no trace: its
    # Cancel is an empty rollback, and the other branch's Try is undone.
    gid = utils.gen_gid(DTM)
    assert tcc.tcc_global_transaction(DTM, gid, transfer(1000)) == ""
    assert wait_status(gid) == "failed"
    assert accounts() == [(1, 70, 0, 0), (2, 30, 0, 0)], accounts()
    print("barrier failing try: failed, balances unchanged")

    server.shutdown()
    print("dtmcli TCC compatibility: OK")


if __name__ == "__main__":
    try:
        main()
    except Exception:
        import traceback

        traceback.print_exc()
        sys.exit(1)
