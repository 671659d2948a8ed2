"""DTM's Python client (dtmcli, from PyPI) runs sagas against Settle, unchanged: a transfer
whose participants use dtmcli's barrier on MySQL, a transfer whose TransIn fails and is
compensated, an action retried after an error, and a submit that waits for the result. Run
by tests/tests/dtmcli.rs (see dtmcli_tcc.py for the environment).

Sagas are sequential here: dtmcli 1.7.7.0's set_concurrent() and add_branch_order() use
attributes it never initialises, so concurrent sagas are covered by tests/tests/saga.rs with
raw requests.
"""

import requests
from dtmcli import barrier, saga, utils

from common import DTM, SUCCESS, calls, connect, run, serve, wait_status


def setup_accounts():
    conn = connect()
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE account (id INT PRIMARY KEY, balance INT NOT NULL)")
        cur.execute("INSERT INTO account (id, balance) VALUES (1, 100), (2, 0)")
    conn.commit()
    conn.close()


def balances():
    conn = connect()
    with conn.cursor() as cur:
        cur.execute("SELECT balance FROM account ORDER BY id")
        rows = cur.fetchall()
    conn.close()
    return [r[0] for r in rows]


def barrier_business(op, body):
    """The business SQL of each barrier branch, as in DTM's examples: account 1 pays,
    account 2 receives, and TransIn fails when the request says so."""

    def run(cur):
        amount = body["amount"]
        if op == "TransOut":
            cur.execute("UPDATE account SET balance = balance - %s WHERE id = 1", (amount,))
        elif op == "TransOutCompensate":
            cur.execute("UPDATE account SET balance = balance + %s WHERE id = 1", (amount,))
        elif op == "TransIn":
            cur.execute("UPDATE account SET balance = balance + %s WHERE id = 2", (amount,))
            if body.get("trans_in_result") == "FAILURE":
                # Raised inside the barrier: the update and the barrier row roll back.
                raise utils.DTMFailureError("account 2 refuses the transfer")
        elif op == "TransInCompensate":
            cur.execute("UPDATE account SET balance = balance - %s WHERE id = 2", (amount,))
        else:
            raise Exception("unknown op " + op)

    return run


def barrier_route(op):
    def handle(q, body):
        bb = barrier.BranchBarrier(q["trans_type"], q["gid"], q["branch_id"], q["op"])
        conn = connect()
        try:
            with conn.cursor() as cur:
                bb.call(cur, barrier_business(op, body))
        finally:
            conn.close()
        return SUCCESS

    return handle


FLAKY_SEEN = set()


def flaky(q, _body):
    """Answers 500 to the first call of each gid, SUCCESS afterwards."""
    if q["gid"] not in FLAKY_SEEN:
        FLAKY_SEEN.add(q["gid"])
        raise Exception("temporarily unavailable")
    return SUCCESS


def refuse(_q, _body):
    raise utils.DTMFailureError("out of stock")


def transaction(gid):
    r = requests.get(DTM + "/query", params={"gid": gid})
    assert r.status_code == 200, r.text
    return r.json()["transaction"]


def main():
    routes = {"/plain/ok": lambda q, b: SUCCESS, "/plain/flaky": flaky, "/plain/refuse": refuse}
    for op in ("TransOut", "TransOutCompensate", "TransIn", "TransInCompensate"):
        routes["/barrier/" + op] = barrier_route(op)
    server, base = serve(routes)
    plain = lambda route: base + "/plain/" + route  # noqa: E731
    bar = lambda op: base + "/barrier/" + op  # noqa: E731
    setup_accounts()

    def transfer(gid, body):
        return (
            saga.Saga(DTM, gid)
            .add(body, bar("TransOut"), bar("TransOutCompensate"))
            .add(body, bar("TransIn"), bar("TransInCompensate"))
        )

    # 1. A transfer with dtmcli's barrier: TransOut (01) then TransIn (02), balances moved.
    gid = utils.gen_gid(DTM)
    transfer(gid, {"amount": 30}).submit()
    assert wait_status(gid) == "succeed"
    assert [c[2] for c in calls(gid, op="action")] == ["01", "02"], calls(gid)
    assert calls(gid, op="compensate") == []
    assert balances() == [70, 30], balances()
    print("barrier transfer: succeed, actions 01 then 02, balances 70 and 30")

    # 2. TransIn answers FAILURE: both steps are compensated, the last first. The barrier
    # turns TransIn's compensate into an empty one (its action never committed), so the
    # balances end as they began.
    gid = utils.gen_gid(DTM)
    transfer(gid, {"amount": 30, "trans_in_result": "FAILURE"}).submit()
    assert wait_status(gid) == "failed"
    assert [c[2] for c in calls(gid, op="action")] == ["01", "02"], calls(gid)
    assert [c[2] for c in calls(gid, op="compensate")] == ["02", "01"], calls(gid)
    assert balances() == [70, 30], balances()
    print("barrier failing TransIn: failed, compensated 02 then 01, balances unchanged")

    # 3. An action that answers 500 once is retried until it succeeds.
    gid = utils.gen_gid(DTM)
    s = saga.Saga(DTM, gid).add({"n": 1}, plain("ok"), plain("ok"))
    s.add({"n": 2}, plain("flaky"), plain("ok")).submit()
    assert wait_status(gid) == "succeed"
    assert [c[2] for c in calls(gid, op="action")] == ["01", "02", "02"], calls(gid)
    assert calls(gid, op="compensate") == []
    print("retried action: succeed, action 02 called twice")

    # 4. wait_result: submit answers once the saga is decided; a failing one answers 409
    # FAILURE with the rollback reason. dtmcli's check_result raises that as
    # DTMFailureError("FAILURE") and drops the body, so the body is read from the same
    # request sent with requests, for a second saga.
    def refusing_saga(gid):
        s = saga.Saga(DTM, gid).add({"n": 1}, plain("ok"), plain("ok"))
        s.add({"n": 2}, plain("refuse"), plain("ok"))
        s.trans_base.wait_result = True
        return s

    gid = utils.gen_gid(DTM)
    try:
        refusing_saga(gid).submit()
        raise AssertionError("submit with wait_result should have raised")
    except utils.DTMFailureError as e:
        assert str(e) == "FAILURE", e
    assert wait_status(gid) == "failed"
    assert [c[2] for c in calls(gid, op="compensate")] == ["02", "01"], calls(gid)
    gid = utils.gen_gid(DTM)
    r = requests.post(DTM + "/submit", json=refusing_saga(gid).trans_base.__dict__)
    assert r.status_code == 409 and "out of stock" in r.text, (r.status_code, r.text)
    assert "out of stock" in transaction(gid)["rollback_reason"], transaction(gid)
    print("wait_result with a failing action: submit raised, answering the rollback reason")

    # ... and a passing one answers SUCCESS once it succeeded.
    gid = utils.gen_gid(DTM)
    s = saga.Saga(DTM, gid).add({"n": 1}, plain("ok"), plain("ok"))
    s.trans_base.wait_result = True
    s.submit()
    assert transaction(gid)["status"] == "succeed", transaction(gid)
    print("wait_result with passing actions: submit returned, succeed")

    server.shutdown()
    print("dtmcli saga compatibility: OK")


if __name__ == "__main__":
    run(main)
