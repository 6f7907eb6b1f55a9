#!/usr/bin/env python3
"""ctest `prometheus_scrape`: a coordinator and two training peers with --http on 127.0.0.1,
scraped by the real Prometheus server (Debian's). Checks that `promtool check metrics` accepts
every /metrics, that Prometheus scrapes every target with up == 1, and that loco metrics come
back from its query API. Exits 77 (ctest: skipped) with the reason when Prometheus is missing.

    prometheus_test.py LOCO_BINARY WORK_DIR
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from waiting import wait_for  # noqa: E402

SKIP = 77


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def main():
    loco, work = sys.argv[1], sys.argv[2]
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            print(f"SKIPPED: {tool} is not installed (bash .ci/install-deps)")
            return SKIP
    os.makedirs(work, exist_ok=True)
    run = tempfile.mkdtemp(dir=work, prefix="run.")
    procs = []

    def start(name, argv):
        log = open(os.path.join(run, name + ".log"), "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append((name, p))
        return p

    try:
        # Plaintext on purpose (--insecure on every side): this test is about /metrics, and the
        # TLS tests (ctest -R Tls) cover the transport.
        start("coordinator", [loco, "coordinator", "--insecure", "--listen", "127.0.0.1:0", "--port-file",
                              f"{run}/port", "--http", "127.0.0.1:0", "--http-port-file",
                              f"{run}/http-port"])
        wait_for("the coordinator", lambda: os.path.exists(f"{run}/port"), 20)
        port = int(open(f"{run}/port").read())
        coord_http = int(open(f"{run}/http-port").read())
        peer_http = [free_port(), free_port()]
        for rank, hp in enumerate(peer_http):
            start(f"peer{rank}", [loco, "join", "--insecure", "--coordinator", f"127.0.0.1:{port}",
                                  "--listen", "127.0.0.1:0", "--rank", str(rank), "--world-hint",
                                  "2", "--wait-for", "2", "--steps", "600", "--inner-steps", "10",
                                  "--measure-topology", "off", "--http", f"127.0.0.1:{hp}"])
        targets = [f"127.0.0.1:{coord_http}"] + [f"127.0.0.1:{hp}" for hp in peer_http]

        # A round has gone through when the coordinator has a step with a loss.
        def first_round():
            st = json.loads(get(f"http://{targets[0]}/api/status"))
            return any(s["loss"] is not None for s in st["steps"]) and st["world"] == 2
        wait_for("the first round", first_round, 120)

        for t in targets:
            text = get(f"http://{t}/metrics")
            check = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                                   capture_output=True)
            assert check.returncode == 0, f"promtool rejects {t}/metrics:\n{check.stdout}{check.stderr}"
            print(f"promtool check metrics: {t}/metrics ok ({len(text.splitlines())} lines)")

        prom_port = free_port()
        config = os.path.join(run, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "scrape_configs:\n  - job_name: loco\n    static_configs:\n"
                    f"      - targets: {json.dumps(targets)}\n")
        start("prometheus", ["prometheus", f"--config.file={config}",
                             f"--storage.tsdb.path={run}/tsdb",
                             f"--web.listen-address=127.0.0.1:{prom_port}"])

        def query(q):
            url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
            r = json.loads(get(url))
            assert r["status"] == "success", r
            return r["data"]["result"]

        def all_up():
            up = query("up")
            return len(up) == 3 and all(s["value"][1] == "1" for s in up) and up
        up = wait_for("Prometheus to scrape all three targets with up == 1", all_up, 60)
        print("up:", {s["metric"]["instance"]: s["value"][1] for s in up})

        rounds = wait_for("loco_train_rounds_total from both peers",
                          lambda: (lambda r: len(r) == 2 and r)(query("loco_train_rounds_total > 0")), 30)
        print("loco_train_rounds_total:", {s["metric"]["instance"]: s["value"][1] for s in rounds})
        world = query("loco_coordinator_world")
        assert len(world) == 1 and world[0]["value"][1] == "2", world
        hist = query("loco_train_allreduce_duration_seconds_count")
        assert len(hist) == 2 and all(float(s["value"][1]) >= 1 for s in hist), hist
        print("loco_coordinator_world: 2; all-reduce histogram counts:",
              [s["value"][1] for s in hist])
        return 0
    finally:
        for name, p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in reversed(procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as e:
        print("FAILED:", e)
        sys.exit(1)
