"""DTM's Python client (dtmcli, from PyPI) runs TCC against Settle, unchanged.

Run by tests/tests/dtmcli.rs with:
  SETTLE_API   the coordinator's DTM API, e.g. http://127.0.0.1:36789/api/dtmsvr
  MYSQL_URL    mysql://user[:password]@host:port of the server holding dtm_barrier.barrier
  BUSI_DB      a database of this test's own for the business tables

Participants are served here with the standard library's HTTP server; the barrier ones use
dtmcli's BranchBarrier on PyMySQL, exactly as a DTM user would.
"""

from dtmcli import barrier, tcc, utils

from common import DTM, SUCCESS, calls, connect, run, serve, wait_status


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


def barrier_route(op):
    def handle(q, body):
        bb = barrier.BranchBarrier(q["trans_type"], q["gid"], q["branch_id"], q["op"])
        conn = connect()
        try:
            with conn.cursor() as cur:
                bb.call(cur, barrier_business(op, body["amount"]))
        finally:
            conn.close()
        return SUCCESS

    return handle


def fail_try(_q, _body):
    raise utils.DTMFailureError("try refused")


def main():
    routes = {"/plain/" + op: (lambda q, b: SUCCESS) for op in ("try", "confirm", "cancel")}
    routes["/plain/fail_try"] = fail_try
    for op in ("out_try", "out_confirm", "out_cancel", "in_try", "in_confirm", "in_cancel"):
        routes["/barrier/" + op] = barrier_route(op)
    server, base = serve(routes)
    plain = lambda op: base + "/plain/" + op  # noqa: E731
    setup_accounts()

    # 1. A passing transfer: both branches confirmed, in reverse order.
    gid = utils.gen_gid(DTM)

    def ok(t):
        t.call_branch({"amount": 30}, plain("try"), plain("confirm"), plain("cancel"))
        t.call_branch({"amount": 30}, plain("try"), plain("confirm"), plain("cancel"))

    assert tcc.tcc_global_transaction(DTM, gid, ok) == gid
    assert wait_status(gid) == "succeed"
    assert [c[2] for c in calls(gid, op="confirm")] == ["02", "01"], calls(gid, op="confirm")
    assert calls(gid, op="cancel") == []
    print("passing transfer: succeed")

    # 2. A failing Try: dtmcli aborts, Settle cancels every registered branch.
    gid = utils.gen_gid(DTM)

    def failing(t):
        t.call_branch({"amount": 30}, plain("try"), plain("confirm"), plain("cancel"))
        t.call_branch({"amount": 30}, plain("fail_try"), plain("confirm"), plain("cancel"))

    assert tcc.tcc_global_transaction(DTM, gid, failing) == ""
    assert wait_status(gid) == "failed"
    assert sorted(c[2] for c in calls(gid, op="cancel")) == ["01", "02"], calls(gid, op="cancel")
    assert calls(gid, op="confirm") == []
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
    run(main)
