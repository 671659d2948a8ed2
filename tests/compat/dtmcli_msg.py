"""DTM's Python client (dtmcli, from PyPI) sends transactional messages through Settle,
unchanged: prepare/submit, do_and_submit_db with dtmcli's barrier, and check-backs answered
by dtmcli's query_prepared. Run by tests/tests/dtmcli.rs (see dtmcli_tcc.py for the
environment)."""

import time

from dtmcli import barrier, msg, utils

from common import DTM, SUCCESS, calls, connect, run, serve, wait_status


def setup():
    conn = connect()
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, state VARCHAR(16) NOT NULL)")
        cur.execute("INSERT INTO orders VALUES (1, 'created'), (2, 'created'), (3, 'created')")
    conn.commit()
    conn.close()


def order_state(order_id):
    conn = connect()
    with conn.cursor() as cur:
        cur.execute("SELECT state FROM orders WHERE id = %s", (order_id,))
        state = cur.fetchone()[0]
    conn.close()
    return state


def query_prepared(q, _body):
    """The check-back endpoint, answered by dtmcli's barrier (raises DTMFailureError on a
    rolled back local transaction)."""
    conn = connect()
    try:
        with conn.cursor() as cur:
            barrier.BranchBarrier(q["trans_type"], q["gid"], q["branch_id"], q["op"]).query_prepared(cur)
    finally:
        conn.close()
    return SUCCESS


def pay(order_id, fail=False):
    def busi(cur):
        cur.execute("UPDATE orders SET state = 'paid' WHERE id = %s", (order_id,))
        if fail:
            raise utils.DTMFailureError("card declined")

    return busi


def main():
    server, base = serve({"/action": lambda q, b: SUCCESS, "/query": query_prepared})
    setup()

    # 1. prepare, then submit: both steps delivered, in order.
    gid = utils.gen_gid(DTM)
    m = msg.Msg(DTM, gid).add({"n": 1}, base + "/action").add({"n": 2}, base + "/action")
    m.prepare(base + "/query")
    m.submit()
    assert wait_status(gid) == "succeed"
    assert [c[2] for c in calls(gid, op="action")] == ["01", "02"], calls(gid)
    print("prepare/submit: succeed, steps 01 and 02 delivered")

    # 2. do_and_submit_db with dtmcli's barrier: the local transaction commits, the message
    # is delivered.
    gid = utils.gen_gid(DTM)
    m = msg.Msg(DTM, gid).add({"order": 1}, base + "/action")
    conn = connect()
    with conn.cursor() as cur:
        m.do_and_submit_db(base + "/query", cur, pay(1))
    conn.close()
    assert wait_status(gid) == "succeed"
    assert order_state(1) == "paid"
    assert len(calls(gid, op="action")) == 1
    print("do_and_submit_db: succeed, delivered")

    # 3. The local transaction fails: dtmcli aborts, nothing is delivered.
    gid = utils.gen_gid(DTM)
    m = msg.Msg(DTM, gid).add({"order": 2}, base + "/action")
    conn = connect()
    try:
        with conn.cursor() as cur:
            m.do_and_submit_db(base + "/query", cur, pay(2, fail=True))
        raise AssertionError("the business failure should have been raised")
    except utils.DTMFailureError:
        pass
    conn.close()
    assert wait_status(gid) == "failed"
    assert order_state(2) == "created"
    assert calls(gid, op="action") == []
    print("do_and_submit_db with a failing local transaction: failed, not delivered")

    # 4. The sender dies after its local commit, before submit: Settle checks back, dtmcli's
    # query_prepared finds the barrier row, the message is delivered.
    gid = utils.gen_gid(DTM)
    m = msg.Msg(DTM, gid).add({"order": 3}, base + "/action")
    m.trans_base.timeout_to_fail = 1
    m.prepare(base + "/query")
    conn = connect()
    with conn.cursor() as cur:
        barrier.BranchBarrier("msg", gid, "00", "msg").call(cur, pay(3))
    conn.close()
    assert wait_status(gid) == "succeed"
    assert len(calls(gid, op="msg")) >= 1 and len(calls(gid, op="action")) == 1, calls(gid)
    print("check-back after a commit: succeed, delivered")

    # 5. The sender dies before its local commit: the check-back rolls back, the message is
    # dropped, and dtmcli's barrier refuses the late local transaction.
    gid = utils.gen_gid(DTM)
    m = msg.Msg(DTM, gid).add({"order": 3}, base + "/action")
    m.trans_base.timeout_to_fail = 1
    m.prepare(base + "/query")
    assert wait_status(gid) == "failed"
    time.sleep(0.3)
    assert calls(gid, op="action") == []
    conn = connect()
    try:
        with conn.cursor() as cur:
            barrier.BranchBarrier("msg", gid, "00", "msg").call(cur, pay(3))
        raise AssertionError("the late local transaction should have been refused")
    except Exception as e:  # dtmcli raises a plain Exception("msg duplicate error")
        assert "duplicate" in str(e), e
    conn.close()
    print("check-back before a commit: failed, dropped, late commit refused")

    server.shutdown()
    print("dtmcli msg compatibility: OK")


if __name__ == "__main__":
    run(main)
