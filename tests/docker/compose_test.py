#!/usr/bin/env python3
"""ctest `docker_compose` (label docker): loco's images built from scratch and the two-datacenter
compose (docker/compose.yaml) run end to end. Checks, in order:

  1. the base image (mmdebstrap, no registry) and loco's and Prometheus's images build;
  2. `docker-compose up` brings up 4 peers in dc1 and dc2 that train (the dashboard's
     /api/status shows world 4 and a round), and the containers report healthy;
  3. Prometheus (the real server, in the compose) scrapes every node with up == 1;
  4. dc1 and dc2 are isolated except through the WAN gateways: a container in dc1 reaches dc2
     only with a route via gw1, not with none and not via the coordinator (which sits in both),
     and the cross-datacenter training traffic passed gw1's tbf-shaped WAN interface;
  5. a peer container killed mid-run (SIGKILL) is evicted while the others train on; started
     again, it comes back with the same peer id (its identity is in its volume) and contributes;
  6. the training completes: every peer container exits 0 at the last step.

Everything it starts is removed by name at the end (containers, networks, volumes, images), and a
dockerd it had to start itself is stopped by pid. Exits 77 (ctest: skipped) with the reason when
it cannot run: not root, or Docker, docker-compose or mmdebstrap are missing.

LOCO_DOCKER_REUSE_IMAGES=1 skips step 1 and runs loco:latest and loco-prometheus:latest as they
are (docker/build.sh), to iterate on the compose; CI never sets it.

    compose_test.py SOURCE_DIR WORK_DIR
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from waiting import wait_for  # noqa: E402

SKIP = 77
# 30 rounds of ~2.5 s: the checks before the kill (health, Prometheus, isolation probes) take about
# 20 s and once let a 10-round run reach round 8 first; the kill must leave rounds to rejoin in.
STEPS, INNER = 600, 20
T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def sh(argv, timeout=60, check=True, env=None, quiet=False):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"")[-3000:]
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        raise AssertionError(f"{' '.join(argv[:4])} ... did not finish within {timeout} s:\n{out}")
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return r


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Compose:
    def __init__(self, src, project, env):
        self.src, self.project, self.env = src, project, env

    def __call__(self, *args, timeout=120, check=True):
        return sh(["docker-compose", "-p", self.project, "-f", f"{self.src}/docker/compose.yaml",
                   *args], timeout=timeout, check=check, env=self.env)

    def container(self, service):
        return f"{self.project}_{service}_1"


def build_images(src, base, image, prom_image, figures):
    """The registry-free base, then loco's and Prometheus's images with no layer cache (the
    ccache in the build's cache mount may still hold objects from an earlier build)."""
    t = time.monotonic()
    sh(["bash", f"{src}/docker/base-image.sh", base], timeout=600)
    figures["base_image_s"] = round(time.monotonic() - t, 1)
    log(f"base image {base}: {figures['base_image_s']} s")
    benv = dict(os.environ, DOCKER_BUILDKIT="1")
    # Prometheus's image (apt only) builds while loco's compiles.
    t = time.monotonic()
    prom = subprocess.Popen(["docker", "build", "--no-cache", "-q", "-f", f"{src}/docker/Dockerfile",
                             "--target", "prometheus", "--build-arg", f"BASE={base}", "-t",
                             prom_image, src], env=benv, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        r = sh(["docker", "build", "--no-cache", "--progress=plain", "-f", f"{src}/docker/Dockerfile",
                "--build-arg", f"BASE={base}", "-t", image, src], timeout=2400, env=benv)
    except AssertionError:
        prom.kill()
        prom.wait()
        raise
    figures["loco_image_s"] = round(time.monotonic() - t, 1)
    hits = re.findall(r"Hits:\s+(\d+) /\s+(\d+)", r.stdout + r.stderr)
    log(f"image {image}: {figures['loco_image_s']} s (ccache hits/compiles: {hits[:1]})")
    out, _ = prom.communicate(timeout=600)
    assert prom.returncode == 0, f"building the prometheus image failed:\n{out[-3000:]}"


def screenshot(url, path):
    """Best effort, never a failure: the dashboard as Chromium renders it (the README's
    docker/dashboard.png is one of these), kept next to the test's logs."""
    chromium = shutil.which("chromium")
    if chromium is None:
        return
    r = sh([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--window-size=1280,1000", "--virtual-time-budget=8000", f"--screenshot={path}", url],
           check=False, timeout=90)
    log(f"dashboard screenshot: {path}" if r.returncode == 0 and os.path.exists(path)
        else f"no dashboard screenshot (chromium exited {r.returncode})")


def main():
    src, work = sys.argv[1], sys.argv[2]
    if os.geteuid() != 0:
        print("SKIPPED: the docker tests need root (the Docker engine)")
        return SKIP
    for tool in ("docker", "dockerd", "docker-compose", "mmdebstrap"):
        if shutil.which(tool) is None:
            print(f"SKIPPED: {tool} is not installed (bash .ci/install-deps installs it)")
            return SKIP
    os.makedirs(work, exist_ok=True)
    tag = f"t{os.getpid()}"
    base, image, prom_image = f"loco-base:{tag}", f"loco:{tag}", f"loco-prometheus:{tag}"
    project = f"locotest{os.getpid()}"
    dockerd = None
    compose = None
    reuse = False
    figures = {}
    try:
        # ---- the engine: use a running one, or start dockerd (`service docker start` fails in
        # containers) and stop it at the end.
        if sh(["docker", "info"], check=False, timeout=30).returncode != 0:
            dlog = open(os.path.join(work, "dockerd.log"), "w")
            dockerd = subprocess.Popen(["dockerd"], stdout=dlog, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                wait_for("dockerd", lambda: sh(["docker", "info"], check=False, timeout=10).returncode == 0, 60)
            except AssertionError:
                print(f"SKIPPED: dockerd does not start here (see {work}/dockerd.log)")
                return SKIP
            log(f"started dockerd (pid {dockerd.pid})")

        # ---- 1. images, from scratch
        reuse = os.environ.get("LOCO_DOCKER_REUSE_IMAGES") == "1"
        if reuse:
            base, image, prom_image = None, "loco:latest", "loco-prometheus:latest"
        else:
            build_images(src, base, image, prom_image, figures)
        size = sh(["docker", "image", "inspect", "-f", "{{.Size}}", image]).stdout.strip()
        figures["loco_image_mb"] = round(int(size) / 1e6)
        user = sh(["docker", "image", "inspect", "-f", "{{.Config.User}}", image]).stdout.strip()
        assert user == "loco", f"the image runs as '{user}', not loco"

        # ---- 2. the compose
        dash, prom = free_port(), free_port()
        env = dict(os.environ, LOCO_IMAGE=image, LOCO_PROMETHEUS_IMAGE=prom_image,
                   LOCO_DASHBOARD_PORT=str(dash), LOCO_PROMETHEUS_PORT=str(prom),
                   LOCO_STEPS=str(STEPS), LOCO_INNER_STEPS=str(INNER), LOCO_WAN_MBIT="50")
        compose = Compose(src, project, env)
        t_up = time.monotonic()
        compose("up", "-d", timeout=300)

        def status():
            with urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/status", timeout=5) as r:
                return json.loads(r.read())

        def last_step(st):
            done = [s for s in st["steps"] if s["loss"] is not None]
            return done[-1] if done else None

        st = wait_for("4 members and a first round on the dashboard",
                      lambda: (lambda s: s["world"] == 4 and last_step(s) and s)(status()), 420, 2)
        figures["first_round_after_up_s"] = round(time.monotonic() - t_up, 1)
        log(f"training: world 4, outer step {last_step(st)['outer_step']}")
        html = urllib.request.urlopen(f"http://127.0.0.1:{dash}/", timeout=5).read().decode()
        assert "<title>loco run</title>" in html and "http://" not in html.split("<script>")[1], \
            "the dashboard page is not the self-contained one"

        def healthy(service):
            return sh(["docker", "inspect", "-f", "{{.State.Health.Status}}",
                       compose.container(service)], check=False).stdout.strip() == "healthy"
        wait_for("the coordinator and peers to report healthy",
                 lambda: all(healthy(s) for s in ("coordinator", "peer-dc1-a", "peer-dc2-b")), 90, 2)
        log("containers healthy (HEALTHCHECK: /healthz)")

        # ---- 3. Prometheus scrapes every node
        def query(q):
            url = f"http://127.0.0.1:{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q})
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())["data"]["result"]
        up = wait_for("Prometheus: up == 1 for all 5 targets",
                      lambda: (lambda u: len(u) == 5 and all(x["value"][1] == "1" for x in u) and u)(query("up")), 90, 2)
        log("prometheus up: " + ", ".join(sorted(x["metric"]["instance"] for x in up)))
        rounds = wait_for("loco_train_rounds_total from the 4 peers",
                          lambda: (lambda r: len(r) == 4 and r)(query("loco_train_rounds_total > 0")), 60, 2)
        figures["prometheus_up_targets"] = len(up)

        # ---- 4. isolation: dc1 reaches dc2 only through the gateways
        probe = ["docker", "run", "--rm", "--network", f"{project}_dc1", "--user", "root",
                 "--cap-add", "NET_ADMIN", "--entrypoint", "bash", image, "-c"]
        target = "10.231.2.11/9100"  # peer-dc2-a's /metrics
        conn = f"timeout 5 bash -c '</dev/tcp/{target}' && echo reached || echo blocked"
        no_route = sh(probe + [conn], timeout=60).stdout.strip()
        via_coord = sh(probe + [f"ip route replace 10.231.2.0/24 via 10.231.1.10 && {conn}"], timeout=60).stdout.strip()
        via_gw = sh(probe + [f"ip route replace 10.231.2.0/24 via 10.231.1.254 && {conn}"], timeout=60).stdout.strip()
        assert (no_route, via_coord, via_gw) == ("blocked", "blocked", "reached"), \
            f"dc1 -> dc2: without a route {no_route}, via the coordinator {via_coord}, via gw1 {via_gw}"
        log("isolation: dc1 -> dc2 blocked without a route and via the coordinator, reached via gw1")
        qdisc = sh(["docker", "exec", compose.container("gw1"), "tc", "-s", "qdisc", "show"]).stdout
        m = re.search(r"qdisc tbf .*?rate (\S+).*?\n\s*Sent (\d+) bytes", qdisc, re.S)
        assert m and int(m.group(2)) > 1_000_000, f"no training traffic through gw1's tbf:\n{qdisc}"
        figures["gw1_wan_bytes_at_check"] = int(m.group(2))
        log(f"gw1 WAN tbf {m.group(1)}: {int(m.group(2)) / 1e6:.1f} MB sent so far")

        # ---- 5. kill a peer mid-run, restart it
        victim = "peer-dc2-b"
        st = status()
        victim_id = next(p["id"] for p in st["peers"] if p["addr"].startswith("10.231.2.12:"))
        kill_step = last_step(st)["outer_step"]
        assert kill_step < STEPS // INNER - 3, f"the run is nearly over (step {kill_step}) before the kill"
        compose("kill", victim)
        t_kill = time.monotonic()
        log(f"killed {victim} (peer {victim_id[:8]}) at outer step {kill_step}")
        st = wait_for("the others to train on with world 3",
                      lambda: (lambda s: s["world"] == 3 and last_step(s)["outer_step"] > kill_step
                               and last_step(s)["world"] == 3 and s)(status()), 240, 1)
        figures["world3_round_after_kill_s"] = round(time.monotonic() - t_kill, 1)
        restart_step = last_step(st)["outer_step"]
        log(f"world 3 at outer step {restart_step}; starting {victim} again")
        compose("start", victim)
        t_start = time.monotonic()

        def back():
            s = status()
            p = next((p for p in s["peers"] if p["id"] == victim_id), None)
            return (p and p["state"] == "member" and p["progress"] and
                    p["progress"]["outer_step"] > restart_step and s["world"] == 4 and p)
        p = wait_for(f"{victim} back as the same peer, contributing", back, 240, 1)
        figures["rejoined_and_reported_after_start_s"] = round(time.monotonic() - t_start, 1)
        log(f"{victim} is peer {victim_id[:8]} again, member, reported outer step {p['progress']['outer_step']}")
        screenshot(f"http://127.0.0.1:{dash}/", os.path.join(work, "dashboard.png"))
        events = [e["kind"] for e in status()["events"] if e["peer"] == victim_id]
        assert "evicted" in events or "left" in events, events

        # ---- 6. the run completes
        peers = ["peer-dc1-a", "peer-dc1-b", "peer-dc2-a", victim]

        def exited():
            out = {}
            for s in peers:
                state = json.loads(sh(["docker", "inspect", "-f", "{{json .State}}",
                                       compose.container(s)]).stdout)
                if state["Running"]:
                    return None
                out[s] = state["ExitCode"]
            return out
        # Slow is not stuck: on a loaded machine a round takes tens of seconds, so the wait
        # fails when no round lands for 300 s (a stall), not at a fixed time (capped at 30 min).
        end = time.monotonic() + 1800
        codes, seen, progress_at = None, last_step(status())["outer_step"], time.monotonic()
        while codes is None:
            codes = exited()
            if codes is not None:
                break
            try:
                now_step = last_step(status())["outer_step"]
            except OSError:  # the dashboard busy for a moment: not progress, not a failure
                now_step = seen
            if now_step > seen:
                seen, progress_at = now_step, time.monotonic()
            assert time.monotonic() - progress_at < 300, \
                f"the run stalled at outer step {seen}: no round for 300 s"
            assert time.monotonic() < end, f"the run did not finish within 30 min (outer step {seen})"
            time.sleep(2)
        assert all(c == 0 for c in codes.values()), f"exit codes {codes}"
        final = last_step(status())
        assert final["outer_step"] == STEPS // INNER, f"the run ended at outer step {final['outer_step']}"
        figures["training_s"] = round(time.monotonic() - t_up, 1)
        log(f"all peers exited 0 at outer step {final['outer_step']}, loss {final['loss']:.4f}")
        print(json.dumps({"test": "docker_compose", **figures}))
        return 0
    finally:
        if compose is not None:
            r = compose("logs", "--no-color", "--tail=30", timeout=60, check=False)
            with open(os.path.join(work, "compose.log"), "w") as f:
                f.write(r.stdout)
            compose("down", "-v", "--remove-orphans", "-t", "5", timeout=180, check=False)
        for img in (image, prom_image, base) if not reuse else ():
            sh(["docker", "rmi", "-f", img], check=False, timeout=120)
        if dockerd is not None:
            dockerd.send_signal(signal.SIGTERM)
            try:
                dockerd.wait(timeout=30)
            except subprocess.TimeoutExpired:
                dockerd.kill()
                dockerd.wait()
            log("stopped dockerd")


if __name__ == "__main__":
    # Debian's docker client first: another one earlier on PATH may lack BuildKit (buildx).
    os.environ["PATH"] = "/usr/bin:" + os.environ.get("PATH", "")
    try:
        sys.exit(main())
    except AssertionError as e:
        print("FAILED:", e, flush=True)
        sys.exit(1)
