#!/usr/bin/env python3
"""Measures how a training run survives its coordinator and evictions (README "Membership").

Starts `loco coordinator` and N `loco join` training peers (a tiny GPT on a generated corpus) on
127.0.0.1, injects one fault per scenario, and prints one JSON object per scenario:

  coord-kill      kill -9 of the coordinator, a new one on the same address after --down-s
  coord-stop      SIGSTOP of the coordinator for --down-s (longer than the heartbeat timeout)
  standby-kill    kill -9 of the coordinator; the peers were started with --coordinator A,B
  standby-stop    SIGSTOP of the coordinator (A); the peers fail over to the standby B
  peer-stop       SIGSTOP of one training peer for --down-s, then SIGCONT
  coord-timeout   kill -9 of the coordinator and no restart: peers exit after --coordinator-timeout

Every scenario checks the peers' JSONL: outer steps contiguous on every peer (no round applied
twice, none skipped), equal digests on every peer that reported a step.

  training/resilience.py [--scenarios a,b] [--peers 3] [--repeat 1] [--out DIR]

Timing comes from polling every 10 ms, so figures are good to about 20 ms.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LOCO = os.environ.get("LOCO", os.path.join(HERE, "..", "build", "cli", "loco"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_corpus(path):
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while",
             "peers", "train"]
    with open(path, "w") as f:
        for i in range(6000):
            f.write(words[(i * 7 + i // 13) % 12] + (".\n" if i % 11 == 10 else " "))


class Run:
    def __init__(self, out, peers, hb_interval, hb_timeout, standby, coordinator_timeout, steps,
                 method):
        self.out = out
        self.n = peers
        self.hb = [str(hb_interval), str(hb_timeout)]
        self.hb_timeout_s = hb_timeout / 1000.0
        self.ports = [free_port()] + ([free_port()] if standby else [])
        self.coords = {}
        self.peers = []
        corpus = os.path.join(out, "corpus.txt")
        write_corpus(corpus)
        self.train = ["--data", corpus, "--width", "32", "--layers", "1", "--heads", "2",
                      "--context", "16", "--batch", "4", "--lr", "0.01", "--warmup", "2",
                      "--steps", str(steps), "--eval-every", "1000000",
                      "--measure-topology", "off", "--log-level", "info", "--method", method]
        if method == "diloco":
            self.train += ["--inner-steps", "10"]
        self.coordinator_timeout = coordinator_timeout
        self.logs = []

    def addr(self, i):
        return f"127.0.0.1:{self.ports[i]}"

    def start_coordinator(self, i, tag):
        log = open(os.path.join(self.out, f"coordinator{i}-{tag}.log"), "w")
        self.logs.append(log)
        p = subprocess.Popen([LOCO, "coordinator", "--listen", self.addr(i),
                              "--heartbeat-interval", self.hb[0], "--heartbeat-timeout", self.hb[1]],
                             stdout=log, stderr=subprocess.STDOUT)
        self.coords[i] = p
        # Listening when a connection succeeds.
        for _ in range(500):
            try:
                socket.create_connection(("127.0.0.1", self.ports[i]), timeout=0.2).close()
                return time.monotonic()
            except OSError:
                time.sleep(0.01)
        raise RuntimeError("coordinator did not listen")

    def start_peers(self):
        coord = ",".join(self.addr(i) for i in range(len(self.ports)))
        for r in range(self.n):
            log = open(os.path.join(self.out, f"peer{r}.log"), "w")
            self.logs.append(log)
            args = [LOCO, "join", "--coordinator", coord, "--listen", "127.0.0.1:0",
                    "--identity", os.path.join(self.out, f"peer{r}.id"), "--rank", str(r),
                    "--wait-for", str(self.n), "--metrics", self.jsonl(r),
                    "--coordinator-timeout", str(self.coordinator_timeout)] + self.train
            self.peers.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT))
            time.sleep(0.2)

    def jsonl(self, r):
        return os.path.join(self.out, f"peer{r}.jsonl")

    def lines(self, r):
        try:
            with open(self.jsonl(r)) as f:
                return [json.loads(l) for l in f if l.strip()]
        except FileNotFoundError:
            return []

    def counts(self):
        return [len(self.lines(r)) for r in range(self.n)]

    def status(self, i=0):
        try:
            out = subprocess.run([LOCO, "status", "--coordinator", self.addr(i), "--json",
                                  "--timeout", "300"], capture_output=True, text=True, timeout=5)
            return json.loads(out.stdout) if out.returncode == 0 else None
        except (subprocess.TimeoutExpired, json.JSONDecodeError):
            return None

    def wait(self, pred, timeout, poll=0.01):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if pred():
                return time.monotonic()
            time.sleep(poll)
        return None

    def wait_rounds(self, k, timeout=60):
        return self.wait(lambda: min(self.counts()) >= k, timeout)

    def wait_progress(self, after_counts, who=None, timeout=60):
        who = range(self.n) if who is None else who
        return self.wait(lambda: all(len(self.lines(r)) > after_counts[r] for r in who), timeout)

    def check(self, left=()):
        """Steps strictly increasing on every peer and contiguous on those that never left the
        group (`left`: peers that were out for a while and skip the rounds they missed); equal
        digests per step across peers."""
        by_step, contiguous, dup = {}, True, 0
        for r in range(self.n):
            steps = [l["step"] for l in self.lines(r)]
            for a, b in zip(steps, steps[1:]):
                if b <= a:
                    dup += 1
                elif b != a + 1 and r not in left:
                    contiguous = False
            for l in self.lines(r):
                by_step.setdefault(l["step"], set()).add(l["digest"])
        disagree = sorted(s for s, d in by_step.items() if len(d) > 1)
        return {"steps_contiguous": contiguous, "rounds_applied_twice": dup,
                "digest_disagreements": len(disagree)}

    def stop(self):
        for p in self.peers + list(self.coords.values()):
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
                except ProcessLookupError:
                    pass
        for p in self.peers + list(self.coords.values()):
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for log in self.logs:
            log.close()


def scenario(name, args, out):
    standby = name.startswith("standby")
    ctimeout = int(args.coordinator_timeout_s * 1000) if name == "coord-timeout" else 600000
    run = Run(out, args.peers, args.hb_interval, args.hb_timeout, standby, ctimeout, args.steps,
              args.method)
    res = {"scenario": name, "method": args.method, "peers": args.peers,
           "heartbeat_timeout_s": run.hb_timeout_s}
    try:
        run.start_coordinator(0, "a")
        if standby:
            run.start_coordinator(1, "standby")
        run.start_peers()
        if run.wait_rounds(args.warm_rounds) is None:
            res["error"] = "training did not start"
            return res
        before = run.counts()
        coord = run.coords[0]
        if name == "coord-kill":
            t_fault = time.monotonic()
            coord.kill()
            coord.wait()
            time.sleep(args.down_s)
            t_listen = run.start_coordinator(0, "b")
            t_resume = run.wait_progress(run.counts())
            res["down_s"] = round(t_listen - t_fault, 3)
            res["resume_after_listen_s"] = round(t_resume - t_listen, 3) if t_resume else None
        elif name == "coord-stop":
            t_fault = time.monotonic()
            coord.send_signal(signal.SIGSTOP)
            time.sleep(args.down_s)
            coord.send_signal(signal.SIGCONT)
            t_cont = time.monotonic()
            t_resume = run.wait_progress(run.counts())
            res["stopped_s"] = round(t_cont - t_fault, 3)
            res["resume_after_sigcont_s"] = round(t_resume - t_cont, 3) if t_resume else None
        elif name in ("standby-kill", "standby-stop"):
            t_fault = time.monotonic()
            if name == "standby-kill":
                coord.kill()
            else:
                coord.send_signal(signal.SIGSTOP)
            at_fault = run.counts()
            t_resume = run.wait_progress(at_fault)
            res["resume_after_fault_s"] = round(t_resume - t_fault, 3) if t_resume else None
            if name == "standby-stop" and t_resume:
                res["resume_after_heartbeat_timeout_s"] = round(
                    t_resume - t_fault - run.hb_timeout_s, 3)
            st = run.status(1)
            res["standby_world"] = st["world"] if st else None
            coord.send_signal(signal.SIGCONT)
        elif name == "peer-stop":
            victim = run.n - 1
            st0 = run.status()
            world = st0["world"] if st0 else run.n
            t_fault = time.monotonic()
            run.peers[victim].send_signal(signal.SIGSTOP)
            t_evicted = run.wait(lambda: (run.status() or {}).get("world") == world - 1, 30, 0.05)
            res["evicted_after_s"] = round(t_evicted - t_fault, 3) if t_evicted else None
            survivors = [r for r in range(run.n) if r != victim]
            run.wait_progress(run.counts(), survivors)  # the others go on without it
            remaining = args.down_s - (time.monotonic() - t_fault)
            if remaining > 0:
                time.sleep(remaining)
            victim_before = len(run.lines(victim))
            run.peers[victim].send_signal(signal.SIGCONT)
            t_cont = time.monotonic()
            t_member = run.wait(lambda: (run.status() or {}).get("world") == world, 30, 0.05)
            t_round = run.wait(lambda: len(run.lines(victim)) > victim_before, 30)
            res["stopped_s"] = round(t_cont - t_fault, 3)
            res["member_again_after_sigcont_s"] = round(t_member - t_cont, 3) if t_member else None
            res["first_round_after_sigcont_s"] = round(t_round - t_cont, 3) if t_round else None
            if t_round:
                first = run.lines(victim)[victim_before]
                others = {l["digest"] for r in survivors for l in run.lines(r)
                          if l["step"] == first["step"]}
                run.wait_progress(run.counts(), survivors, 10)
                others |= {l["digest"] for r in survivors for l in run.lines(r)
                           if l["step"] == first["step"]}
                res["first_round_back"] = first["step"]
                res["first_round_digest_equal"] = others == {first["digest"]}
        elif name == "coord-timeout":
            t_fault = time.monotonic()
            coord.kill()
            exits = [run.wait(lambda p=p: p.poll() is not None, args.coordinator_timeout_s + 30)
                     for p in run.peers]
            res["coordinator_timeout_s"] = args.coordinator_timeout_s
            res["peer_exit_after_s"] = [round(t - t_fault, 3) if t else None for t in exits]
            res["exit_codes"] = [p.poll() for p in run.peers]
            with open(os.path.join(out, "peer0.log")) as f:
                text = f.read()
            res["clear_message"] = "--coordinator-timeout" in text
            return res
        # Let the run go on a little, then check the invariants.
        run.wait_rounds(min(run.counts()) + 20, timeout=30)
        res["rounds_before_fault"] = min(before)
        res["max_retries_of_a_round"] = max((l["retries"] for r in range(run.n)
                                             for l in run.lines(r)), default=0)
        res["rounds_at_end"] = min(run.counts())
        res.update(run.check(left=(run.n - 1,) if name == "peer-stop" else ()))
    finally:
        run.stop()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default="coord-kill,coord-stop,standby-kill,standby-stop,"
                    "peer-stop,coord-timeout")
    ap.add_argument("--peers", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--hb-interval", type=int, default=500)
    ap.add_argument("--hb-timeout", type=int, default=3000)
    ap.add_argument("--down-s", type=float, default=8.0)
    ap.add_argument("--coordinator-timeout-s", type=float, default=5.0)
    ap.add_argument("--warm-rounds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=100000)
    ap.add_argument("--method", default="diloco", help="diloco (H=10) or ddp")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    base = args.out or tempfile.mkdtemp(prefix="loco-resilience-")
    for k in range(args.repeat):
        for name in args.scenarios.split(","):
            out = os.path.join(base, f"{name}-{k}")
            os.makedirs(out, exist_ok=True)
            print(json.dumps(scenario(name, args, out)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
