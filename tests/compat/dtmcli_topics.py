"""Topics as a DTM user drives them: subscribe, unsubscribe, delete and the key-value reads
over raw HTTP (dtmcli has no helper for them), and messages sent with dtmcli's Msg to
`topic://NAME`, which fan out to every subscriber. Run by tests/tests/dtmcli.rs (see
dtmcli_tcc.py for the environment).

DTM answers every refused topic request with 500; Settle answers 400, 404 or 409. Both carry
DTM's text, so only the text is checked, and that the status is not 200.
"""

import json

import requests
from dtmcli import msg, utils

from common import DTM, SUCCESS, calls, run, serve, wait_status

TOPIC = "orders"

# The body each subscriber call carried, by (gid, branch_id).
BODIES = {}


def subscriber(q, body):
    BODIES[(q["gid"], q["branch_id"])] = body
    return SUCCESS


def subscribe(url, remark=""):
    return requests.get(DTM + "/subscribe", params={"topic": TOPIC, "url": url, "remark": remark})


def unsubscribe(topic, url):
    return requests.get(DTM + "/unsubscribe", params={"topic": topic, "url": url})


def refused(r, text):
    """A refusal: any status but 200, with DTM's text in the body."""
    assert r.status_code != 200 and text in r.text, (r.status_code, r.text)


def query_topic():
    r = requests.get(DTM + "/queryKV", params={"cat": "topics", "key": TOPIC})
    utils.check_result(r)
    return r.json()["kv"]


def send(gid, body):
    """Sends a msg with one step to the topic, through dtmcli."""
    m = msg.Msg(DTM, gid).add(body, "topic://" + TOPIC)
    m.submit()
    return m


def delivered(gid):
    """{path: (branch_id, body)} of the calls the subscribers received for `gid`."""
    assert calls(gid) == calls(gid, op="action"), calls(gid)
    return {c[0]: (c[2], BODIES[(gid, c[2])]) for c in calls(gid)}


def main():
    server, base = serve({"/sub/a": subscriber, "/sub/b": subscriber})
    sub_a, sub_b = base + "/sub/a", base + "/sub/b"

    # 1. Two subscribers; the same URL cannot subscribe twice.
    utils.check_result(subscribe(sub_a, "first subscriber"))
    utils.check_result(subscribe(sub_b))
    refused(subscribe(sub_a), "this url exists")
    print("subscribe: two subscribers, a second subscription of the same url refused")

    # 2. The topic as DTM's key-value reads show it: v is a JSON string of the subscribers.
    r = requests.get(DTM + "/scanKV", params={"cat": "topics"})
    utils.check_result(r)
    scan = r.json()
    assert scan["next_position"] == "", scan
    assert len(scan["kv"]) == 1, scan
    entry = scan["kv"][0]
    assert set(entry) == {"id", "cat", "k", "v", "version", "create_time", "update_time"}, entry
    assert (entry["cat"], entry["k"]) == ("topics", TOPIC), entry
    assert json.loads(entry["v"]) == [
        {"url": sub_a, "remark": "first subscriber"},
        {"url": sub_b, "remark": ""},
    ], entry
    assert query_topic() == [entry], query_topic()
    print("scanKV and queryKV: the topic with its two subscribers")

    # 3. A msg to the topic reaches both subscribers, one branch each, with its payload.
    gid = utils.gen_gid(DTM)
    send(gid, {"order": 1})
    assert wait_status(gid) == "succeed"
    assert delivered(gid) == {
        "/sub/a": ("01-01", {"order": 1}),
        "/sub/b": ("01-02", {"order": 1}),
    }, delivered(gid)
    print("msg to the topic: succeed, delivered to both subscribers as 01-01 and 01-02")

    # 4. After b unsubscribes, a new msg reaches only a, as branch 01.
    utils.check_result(unsubscribe(TOPIC, sub_b))
    remaining = [json.loads(e["v"]) for e in query_topic()]
    assert remaining == [[{"url": sub_a, "remark": "first subscriber"}]], remaining
    gid = utils.gen_gid(DTM)
    send(gid, {"order": 2})
    assert wait_status(gid) == "succeed"
    assert delivered(gid) == {"/sub/a": ("01", {"order": 2})}, delivered(gid)
    refused(unsubscribe("no-such-topic", sub_a), "no such a topic")
    print("unsubscribe: the next msg reaches the remaining subscriber only, as 01")

    # 5. A deleted topic is gone, and a msg to it is refused: nothing is stored or called.
    r = requests.delete(DTM + "/topic/" + TOPIC)
    utils.check_result(r)
    assert query_topic() == [], query_topic()
    gid = utils.gen_gid(DTM)
    m = msg.Msg(DTM, gid).add({"order": 3}, "topic://" + TOPIC)
    try:
        m.submit()
    except Exception:  # noqa: BLE001 - dtmcli's check_result raises on any answer but 200
        pass
    else:
        raise AssertionError("a msg to a topic without subscribers should have been refused")
    # dtmcli's exception does not carry the answer, so its text is read from the same request
    # sent with requests.
    refused(requests.post(DTM + "/submit", json=m.trans_base.__dict__), "topic not found")
    r = requests.get(DTM + "/query", params={"gid": gid})
    assert r.status_code == 200 and r.json()["transaction"] is None, r.text
    assert calls(gid) == []
    print("deleted topic: gone from queryKV, a msg to it refused with 'topic not found'")

    server.shutdown()
    print("dtmcli topics compatibility: OK")


if __name__ == "__main__":
    run(main)
