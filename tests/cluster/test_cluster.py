"""Two instances behind nginx, as deploy/ runs them: what they share and what survives failures.

One cluster (cluster.py) serves every test; each test starts with both instances, Redis and
nginx up, starting again whatever a test before stopped, and makes its own keys.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import time
import unittest

from cluster import MODEL, Cluster, Load, Sent, chat

cluster: Cluster


def setUpModule() -> None:
    global cluster
    cluster = Cluster()
    unittest.addModuleCleanup(cluster.stop)


def wait_for(what: str, condition, timeout: float) -> float:  # noqa: ANN001
    """Seconds until `condition()` holds; fails the test after `timeout`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start


def redis_up_on_every_instance(value: float) -> bool:
    return all(proxy.metric("llm_proxy_redis_up") == value for proxy in cluster.proxies)



def slow_load_with_a_answering(name: str) -> Load:
    """Load through nginx with a new key of its own, on answers slow enough (0.3 s) that A has
    requests in flight, once A has answered one of them."""
    _, secret = cluster.create_key(name)
    cluster.wait_until_known(secret)
    cluster.upstream.delay = 0.3
    load = Load(cluster.nginx.port, secret, threads=6)
    wait_for("A answering under load",
             lambda: any(s.answer.upstreams[-1:] == [cluster.a.address] for s in load.sent), 5)
    return load

class ClusterTest(unittest.TestCase):
    def setUp(self) -> None:
        cluster.ensure_up()

    def assert_rpm_holds_across_both_instances(self, secret: str, rpm: int) -> None:
        """`2 * rpm` requests one after another through nginx: exactly `rpm` answered, the rest
        refused with a Retry-After, and both instances took part."""
        answers = [chat(cluster.nginx.port, secret, f"rpm {i}") for i in range(2 * rpm)]
        statuses = [answer.status for answer in answers]
        self.assertEqual(statuses.count(200), rpm, statuses)
        self.assertEqual(statuses.count(429), rpm, statuses)
        for answer in answers:
            if answer.status == 429:
                self.assertEqual(answer.json()["error"]["code"], "requests_per_minute")
                self.assertGreaterEqual(int(answer.headers["retry-after"]), 1)
        served_by = {answer.upstreams[-1] for answer in answers}
        self.assertEqual(served_by, {cluster.a.address, cluster.b.address})

    def test_an_issued_keys_requests_per_minute_hold_across_both_instances(self) -> None:
        # Made with the keys command beside the running instances, as an operator would.
        created = cluster.keys_command("create", "--name", "rpm-5", "--rpm", "5",
                                       "--models", "openai/*")
        secret = re.search(r"lp-[0-9A-Za-z]{43}", created)
        assert secret is not None, created
        cluster.wait_until_known(secret[0])
        self.assert_rpm_holds_across_both_instances(secret[0], 5)

    def test_an_answer_cached_through_a_is_a_hit_through_b_for_its_tenant_only(self) -> None:
        _, tenant = cluster.create_key("cache-tenant")
        _, other = cluster.create_key("cache-other-tenant")
        cluster.wait_until_known(tenant)
        cluster.wait_until_known(other)
        content = f"cache {secrets.token_hex(8)}"
        use = {"X-Proxy-Cache": "use"}
        calls = cluster.upstream.calls
        entries = len(cluster.redis.keys("*cache:*"))

        through_a = chat(cluster.a.port, tenant, content, use)
        self.assertEqual((through_a.status, through_a.headers.get("x-proxy-cache")), (200, "MISS"))
        self.assertEqual(cluster.upstream.calls, calls + 1)
        # A writes the answer to Redis beside answering; B is asked once the entry is there.
        # (Any prefix: the design said `lp:cache:<hex>`, the code on main writes
        # `llm-proxy:cache:<hex>`.)
        wait_for("A's answer in Redis", lambda: len(cluster.redis.keys("*cache:*")) > entries, 2)

        through_b = chat(cluster.b.port, tenant, content, use)
        self.assertEqual((through_b.status, through_b.headers.get("x-proxy-cache")), (200, "HIT"))
        self.assertEqual(through_b.body, through_a.body)
        self.assertEqual(cluster.upstream.calls, calls + 1, "a hit asks no upstream")

        another_tenant = chat(cluster.b.port, other, content, use)
        self.assertEqual((another_tenant.status, another_tenant.headers.get("x-proxy-cache")),
                         (200, "MISS"))
        self.assertEqual(cluster.upstream.calls, calls + 2)

    def test_a_key_revoked_through_a_is_refused_by_b_within_a_second(self) -> None:
        key_id, secret = cluster.create_key("revoked")
        cluster.wait_until_known(secret)
        self.assertEqual(chat(cluster.b.port, secret, "before").status, 200)

        revoked = cluster.admin_call("DELETE", f"/admin/keys/{key_id}")
        self.assertEqual(revoked.status, 200, revoked.body)
        took = wait_for("B refusing the revoked key",
                        lambda: chat(cluster.b.port, secret, "after").status == 401, 1.0)
        print(f"\n  B refused the revoked key {took * 1000:.0f} ms after A revoked it")
        answer = chat(cluster.b.port, secret, "after")
        self.assertEqual(answer.status, 401)
        self.assertIn("was revoked", answer.json()["error"]["message"])

    def test_killing_a_loses_only_its_requests_in_flight_and_b_serves_every_later_one(
            self) -> None:
        load = slow_load_with_a_answering("kill-a")
        killed_at = time.monotonic()
        cluster.a.kill()
        # Every request that starts from here on finds A's process gone.
        dead_at = time.monotonic()
        wait_for("requests started after the kill to finish",
                 lambda: sum(s.start > dead_at for s in load.sent) >= 18, 15)
        sent = load.stop()

        lost = [s for s in sent if s.answer.status != 200]
        in_flight = [s for s in sent if s.start < dead_at and s.end > killed_at]
        after = [s for s in sent if s.start > dead_at]
        print(f"\n  {len(sent)} requests; {len(in_flight)} in flight when A was killed, "
              f"{len(lost)} of them lost (A's); {len(after)} started after the kill, "
              f"{sum(s.answer.status == 200 for s in after)} answered through B")
        for s in lost:
            self.assertLess(s.start, dead_at, f"lost a request started after the kill: {s}")
            self.assertGreater(s.end, killed_at, f"lost a request that had ended: {s}")
            self.assertEqual(s.answer.upstreams[-1:], [cluster.a.address], describe(s))
        self.assertGreater(len(lost), 0, "A had requests in flight: they cannot all survive")
        self.assertTrue(after, "no request started after the kill")
        for s in after:
            self.assertEqual(s.answer.status, 200, describe(s))
            self.assertEqual(s.answer.upstreams[-1], cluster.b.address, describe(s))

    def test_a_rolling_restart_of_a_under_load_loses_no_request(self) -> None:
        # As deploy/README.md says to restart an instance: out of nginx (reload), SIGTERM, start
        # it again, back into nginx. A finishes what it has; nginx sends the rest to B.
        load = slow_load_with_a_answering("restart-a")
        cluster.nginx.reload(down=cluster.a)
        stopped_at = time.monotonic()
        cluster.a.stop()
        exited_at = time.monotonic()
        cluster.a.start()
        cluster.nginx.reload(down=None)
        back_at = time.monotonic()
        wait_for("A answering again",
                 lambda: any(s.start > back_at and s.answer.upstreams[-1:] == [cluster.a.address]
                             for s in load.sent), 5)
        sent = load.stop()

        print(f"\n  {len(sent)} requests; A exited {exited_at - stopped_at:.2f} s after SIGTERM "
              f"and was back in nginx {back_at - exited_at:.2f} s later")
        for s in sent:
            self.assertEqual(s.answer.status, 200, describe(s))

    def test_a_stream_through_nginx_arrives_event_by_event(self) -> None:
        _, secret = cluster.create_key("stream")
        cluster.wait_until_known(secret)
        gap = cluster.upstream.stream_gap
        connection = http.client.HTTPConnection("127.0.0.1", cluster.nginx.port, timeout=10)
        connection.request("POST", "/v1/chat/completions", json.dumps(
            {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}),
            {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"})
        response = connection.getresponse()
        self.assertEqual(response.status, 200)
        arrivals = []
        while line := response.readline():
            if line.startswith(b"data:"):
                arrivals.append(time.monotonic())
        connection.close()
        events = len(cluster.upstream.events)
        self.assertEqual(len(arrivals), events)
        # Held back in a buffer, they would come together at the end.
        spread = arrivals[-1] - arrivals[0]
        self.assertGreater(spread, (events - 1) * gap * 0.75,
                           [round(t - arrivals[0], 3) for t in arrivals])

    def test_stopping_redis_under_load_keeps_serving_and_restarting_it_restores_shared_limits(
            self) -> None:
        wait_for("llm_proxy_redis_up 1 on both instances",
                 lambda: redis_up_on_every_instance(1), 5)
        # Limits that never refuse here, so the load goes through the shared limit checks.
        _, secret = cluster.create_key("redis-outage", rpm=1_000_000)
        cluster.wait_until_known(secret)
        cluster.upstream.delay = 0.02
        load = Load(cluster.nginx.port, secret, threads=4)
        wait_for("load flowing", lambda: len(load.sent) >= 20, 5)

        cluster.redis.stop()
        stopped_at = time.monotonic()
        down = wait_for("llm_proxy_redis_up 0 on both instances",
                        lambda: redis_up_on_every_instance(0), 5)
        wait_for("load through the outage",
                 lambda: sum(s.start > stopped_at for s in load.sent) >= 40, 10)
        cluster.redis.start()
        started_at = time.monotonic()
        up = wait_for("llm_proxy_redis_up 1 on both instances again",
                      lambda: redis_up_on_every_instance(1), 5)
        sent = load.stop()

        during = [s for s in sent if stopped_at < s.start < started_at]
        print(f"\n  {len(sent)} requests, {len(during)} while Redis was down; both instances "
              f"said llm_proxy_redis_up 0 after {down:.2f} s and 1 again {up:.2f} s after Redis "
              f"was back")
        self.assertTrue(during)
        for s in sent:
            self.assertEqual(s.answer.status, 200, describe(s))

        _, limited = cluster.create_key("rpm-after-redis", rpm=5)
        cluster.wait_until_known(limited)
        self.assert_rpm_holds_across_both_instances(limited, 5)


def describe(sent: Sent) -> str:
    answer = sent.answer
    return (f"status {answer.status} through {answer.upstreams} after "
            f"{(sent.end - sent.start) * 1000:.0f} ms: {answer.error or answer.body[:300]!r}")


if __name__ == "__main__":
    unittest.main()
