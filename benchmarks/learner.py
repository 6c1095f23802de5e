"""The on-device learner under load, on real Split CIFAR-100 images.

1. **Default method** (in process): the same stream through ``edgecl.Learner`` with NCM and
   with latent replay (ViT-LR), scored on the same held-out images.
2. **Online against offline**: the default learner's held-out accuracy over time against an
   offline ``edgecl run`` of the same method on the same stream (same images, same order of
   classes, no augmentation).
3. **Service under load**: ``edgecl learn`` in its own process; a separate client process
   streams the training images over HTTP at a fixed rate while this process sends one-image
   predictions and samples the server's RSS: ingest throughput, p50/p99 latency of
   ``/v1/samples`` and ``/v1/predict``, training throughput, peak RSS against the budget.
4. **kill -9**: the client keeps sending keyed samples while the server is killed and
   restarted; then every acknowledged sample must be in the store exactly once and trained on.

    python -m benchmarks.learner [--restarts 20] [--out runs/learner_bench]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from benchmarks.common import RESULTS, table_lines, table_row, targets_section, write_result
from edgecl.config import RunConfig
from edgecl.data import load_dataset
from edgecl.io import atomic_write_text
from edgecl.learner import Learner
from edgecl.learner.images import encode_png
from edgecl.runner import build_scenario, run

CLASSES, TRAIN_PER_CLASS = 10, 30
DATA = os.environ.get("EDGECL_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
BUDGET_MIB = 1536
STREAM_RATE = 20.0  # images per second sent by the client


def offline_config() -> RunConfig:
    return RunConfig.model_validate({
        "name": "learner_offline", "seed": 0,
        "data": {"dataset": "cifar100", "root": DATA, "n_tasks": CLASSES,
                 "class_order": list(range(CLASSES)), "train_per_class": TRAIN_PER_CLASS},
        "train": {"batch_size": 16, "augment": False, "eval_batch_size": 100},
        "cost": {"device_profiles": []},
        "methods": [{"name": "ncm"}],
    })


def the_stream(cfg: RunConfig) -> dict[str, Any]:
    """The offline run's own images, in its task order, with CIFAR-100's class names."""
    scenario = build_scenario(cfg)
    names = load_dataset("cifar100", "train", root=DATA).class_names
    order = [int(c) for c in scenario.class_order]
    train = np.concatenate([t.train_indices for t in scenario.tasks])
    test = np.concatenate([t.test_indices for t in scenario.tasks])
    return {
        "images": scenario.train.images[train],
        "labels": np.array([names[order[y]] for y in scenario.train.labels[train]]),
        "test_images": scenario.test.images[test],
        "test_labels": [names[order[y]] for y in scenario.test.labels[test]],
    }


def learner_config(method: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    cfg = {"data_root": DATA, "boundary": {"policy": "new_classes", "every_n": 32},
           "budget": {"memory_mib": BUDGET_MIB}, **over}
    # in process, the benchmark's own RSS (earlier learners, the offline run) is no budget
    if method is not None:
        cfg["method"] = method
    return cfg


def held_out_accuracy(learner: Learner, stream: dict[str, Any]) -> float:
    names = learner.store.classes()
    images = np.stack([learner.decode_array(im) for im in stream["test_images"]])
    preds = []
    for k in range(0, len(images), 100):
        logits, _, _ = learner.logits(images[k:k + 100])
        preds += logits.argmax(dim=1).tolist()
    truth = [names.index(n) for n in stream["test_labels"]]
    return 100.0 * float(np.mean(np.array(preds) == np.array(truth)))


def in_process(stream: dict[str, Any], method: dict[str, Any] | None,
               eval_every: int | None = None) -> dict[str, Any]:
    over = {"eval": {"dataset": "cifar100", "per_class": 100, "every_steps": eval_every}} if (
        eval_every) else {}
    start = time.perf_counter()
    with Learner(tempfile.mkdtemp(), learner_config(method, budget={}, **over)) as learner:
        for k in range(0, len(stream["labels"]), 16):
            learner.add([encode_png(im) for im in stream["images"][k:k + 16]],
                        list(stream["labels"][k:k + 16]))
        settle(learner.status)
        seconds = time.perf_counter() - start
        return {"method": learner.cfg.method.name, "params": learner.cfg.method.model_dump(),
                "accuracy": held_out_accuracy(learner, stream),
                "train_seconds": seconds, "tasks": learner.status()["tasks"],
                "over_time": learner.history()["accuracy"]}


def settle(status: Any, timeout: float = 900.0) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = status()
        if s["queue"] == 0 and not s["training"] and s["samples_stored"]:
            return s
        time.sleep(0.2)
    raise RuntimeError("the learner did not settle")


# ---- the service, in its own process -------------------------------------------------------
class Server:
    def __init__(self, state: Path, cfg: Path, port: int, log: Path) -> None:
        self.state, self.cfg, self.port, self.log = state, cfg, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        began = time.perf_counter()
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgecl.cli", "learn", "--state", str(self.state),
                 "--config", str(self.cfg), "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the learner exited; see {self.log}")
            try:
                if httpx.get(f"{self.url}/v1/status", timeout=2).status_code == 200:
                    return time.perf_counter() - began
            except httpx.TransportError:
                time.sleep(0.1)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def status(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/v1/status", timeout=10).json()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_stream(path: Path, stream: dict[str, Any], n: int | None = None) -> None:
    n = n or len(stream["labels"])
    np.savez(path, images=stream["images"][:n], labels=stream["labels"][:n],
             keys=np.array([f"s{i:06d}" for i in range(n)]))


def start_client(url: str, samples: Path, acked: Path, rate: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edgecl.service.stream", "--url", url, "--samples",
         str(samples), "--acked", str(acked), "--per-request", "4", "--rate", str(rate),
         "--deadline-s", "1200"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def server_timing(header: str) -> dict[str, float]:
    """``name;dur=ms, ...`` (a Server-Timing header) as {name: ms}."""
    out = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, dur = part.partition(";dur=")
        out[name] = float(dur or "nan")
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def fresh(*paths: Path) -> None:
    """A rerun starts from nothing: an old state directory would hold the samples already
    (no training to measure under) and an old acknowledgement log would be appended to."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def under_load(work: Path, stream: dict[str, Any]) -> dict[str, Any]:
    fresh(work / "load_state", work / "load_acked.jsonl")
    cfg = work / "load.yaml"
    cfg.write_text(yaml.safe_dump(learner_config()))
    server = Server(work / "load_state", cfg, free_port(), work / "load_server.log")
    startup = server.start()
    samples, acked = work / "load_stream.npz", work / "load_acked.jsonl"
    write_stream(samples, stream)
    probe = encode_png(stream["test_images"][0])
    latencies: list[float] = []
    parts: list[dict[str, float]] = []
    rss: list[float] = []
    done = threading.Event()

    def predict_and_sample() -> None:
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                began = time.perf_counter()
                reply = client.post(f"{server.url}/v1/predict",
                                    files=[("image", ("p.png", probe, "image/png"))])
                seconds = time.perf_counter() - began  # before the status request below
                if reply.status_code == 200 and server.status()["training"]:
                    latencies.append(seconds)
                    parts.append(server_timing(reply.headers.get("server-timing", "")))
                rss.append(server.rss_mib())
                time.sleep(0.1)

    sampler = threading.Thread(target=predict_and_sample, daemon=True)
    began = time.perf_counter()
    client = start_client(server.url, samples, acked, STREAM_RATE)
    sampler.start()
    client.communicate(timeout=1200)
    ingest_s = time.perf_counter() - began
    final = settle(server.status)
    train_s = time.perf_counter() - began
    done.set()
    sampler.join()
    rss.append(server.rss_mib())
    sent = [json.loads(line) for line in acked.read_text().splitlines()]
    per_request = [r["latency_s"] for r in sent[::4]]
    server.stop()
    return {
        "images": len(sent), "client_rate_images_per_s": STREAM_RATE, "images_per_request": 4,
        "startup_s": startup,
        "ingest_images_per_s": len(sent) / ingest_s,
        "samples_p50_ms": 1e3 * percentile(per_request, 50),
        "samples_p99_ms": 1e3 * percentile(per_request, 99),
        "predict_requests_while_training": len(latencies),
        "predict_p50_ms": 1e3 * percentile(latencies, 50),
        "predict_p99_ms": 1e3 * percentile(latencies, 99),
        # the server's own account of each request (its Server-Timing header): where the
        # time of the slowest goes
        "predict_server_ms": {name: {"p50": percentile([p.get(name, 0.0) for p in parts], 50),
                                     "p99": percentile([p.get(name, 0.0) for p in parts], 99)}
                              for name in (parts[0] if parts else {})},
        "training_images_per_s": final["samples_trained"] / train_s,
        "peak_rss_mib": max(rss), "budget_mib": BUDGET_MIB,
        "server_peak_rss_mib_reported": final["memory"]["peak_rss_mib"],
    }


def kill_nine(work: Path, stream: dict[str, Any], restarts: int) -> dict[str, Any]:
    fresh(work / "kill_state", work / "kill_acked.jsonl")
    cfg = work / "kill.yaml"
    cfg.write_text(yaml.safe_dump(learner_config(checkpoint_every_s=1.0)))
    state = work / "kill_state"
    server = Server(state, cfg, free_port(), work / "kill_server.log")
    server.start()
    samples, acked = work / "kill_stream.npz", work / "kill_acked.jsonl"
    write_stream(samples, stream)
    client = start_client(server.url, samples, acked, 40.0)
    rnd, startups = random.Random(0), []
    for _ in range(restarts):
        time.sleep(rnd.uniform(0.2, 2.0))
        server.kill()
        startups.append(server.start())
    out, err = client.communicate(timeout=1200)
    final = settle(server.status)
    server.stop()
    sent = [json.loads(line) for line in acked.read_text().splitlines()]
    with sqlite3.connect(state / "samples.db") as db:
        stored = dict(db.execute("SELECT key, id FROM samples").fetchall())
        (rows,) = db.execute("SELECT COUNT(*) FROM samples").fetchone()
    lost = sum(1 for r in sent if stored.get(r["key"]) != r["id"])
    return {
        "restarts": restarts, "acknowledged": len(sent), "stored_rows": rows,
        "lost": lost, "duplicated": rows - len(stored),
        "trained_once": final["samples_trained"] == rows,
        "client_retries": json.loads(out)["retries"] if out.strip() else None,
        "restart_s_median": statistics.median(startups),
        "torn_writes_discarded": (work / "kill_server.log").read_text().count("torn write"),
    }


def target(name: str, measured: float, goal: str, met: bool) -> dict[str, Any]:
    return {"name": name, "measured": measured, "goal": goal, "met": bool(met)}


def markdown(res: dict[str, Any]) -> str:
    lines = ["# On-device learner (`benchmarks/learner.py`)", "",
             f"Command: `{res['command']}`. Stream: {res['stream']}. Load average (1/5/15 "
             f"min) before {res['load_average_before']}, after {res['load_average_after']}.", "",
             "## Default method (same stream, same held-out images)", "",
             *table_lines(["method", "held-out acc (%)", "seconds", "tasks"])]
    for r in res["default_method"]:
        lines.append(table_row([r["label"], f"{r['accuracy']:.1f}", f"{r['train_seconds']:.0f}",
                                str(r["tasks"])]))
    o = res["online_vs_offline"]
    lines += ["", "## Online against offline (NCM)", "",
              f"Final held-out accuracy: learner {o['learner_final']:.1f} %, offline "
              f"`edgecl run` {o['offline_final']:.1f} % (difference {o['difference']:+.1f}).", "",
              *table_lines(["classes seen", "learner (%)", "offline (%)"])]
    for row in o["over_time"]:
        lines.append(table_row([str(row["classes"]), f"{row['learner']:.1f}",
                                f"{row['offline']:.1f}"]))
    lines += ["", "## Service under load", "",
              "`predict_*_ms`: the client's time for one `POST /v1/predict` of one PNG, sent "
              "from this process every 0.1 s while the server reports training (the status "
              "request that checks it is not timed); `samples_*_ms`: the streaming client's "
              "time per 4-image `POST /v1/samples`.", "", *table_lines(["figure", "value"])]
    lines += [table_row([k, f"{v:.1f}" if isinstance(v, float) else str(v)])
              for k, v in res["under_load"].items() if k != "predict_server_ms"]
    lines += ["", "`/v1/predict` on the server while training (its `Server-Timing` header):", "",
              *table_lines(["part", "p50 ms", "p99 ms"])]
    lines += [table_row([k, f"{v['p50']:.1f}", f"{v['p99']:.1f}"])
              for k, v in res["under_load"].get("predict_server_ms", {}).items()]
    lines += ["", "## kill -9 under load", "", *table_lines(["figure", "value"])]
    lines += [table_row([k, str(v)]) for k, v in res["kill_nine"].items()]
    lines += targets_section(res["targets"])
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--restarts", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/learner_bench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    cfg = offline_config()
    stream = the_stream(cfg)
    candidates = [
        ("ncm (default)", None),
        ("latent_replay, plain head, lr 0.05", {"name": "latent_replay", "split_layer": 12,
                                                 "head": "plain", "lr_init": 0.05,
                                                 "lr_inc": 0.05, "storage": "fp16"}),
        ("latent_replay, ViT-LR defaults (CWR*)", {"name": "latent_replay", "split_layer": 12}),
    ]
    default = [{"label": label, **in_process(stream, m, eval_every=2 if m is None else None)}
               for label, m in candidates]
    offline = run(cfg, args.out / "offline")[0]
    rows = offline.accuracy.class_il.matrix
    over = default[0]["over_time"]
    online = {"learner_final": default[0]["accuracy"],
              "offline_final": offline.accuracy.class_il.final_average,
              "over_time": [{"classes": int(p["classes"]), "learner": p["accuracy"],
                             "offline": float(np.mean(rows[int(p["classes"]) - 1]))}
                            for p in over if p["classes"] <= len(rows)]}
    online["difference"] = online["learner_final"] - online["offline_final"]
    load = under_load(args.out, stream)
    kills = kill_nine(args.out, stream, args.restarts)
    res = {
        "command": "python -m benchmarks.learner " + " ".join(sys.argv[1:]),
        "stream": f"Split CIFAR-100, classes 0-{CLASSES - 1} one per task, {TRAIN_PER_CLASS} "
                  "training images each (the offline run's own draw), all 100 test images "
                  "per class held out; ViT-Ti/16 at 224 px",
        "default_method": [{k: v for k, v in r.items() if k != "over_time"} for r in default],
        "online_vs_offline": online, "under_load": load, "kill_nine": kills,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }
    res["targets"] = [
        target("/v1/predict p99 while training (ms)", load["predict_p99_ms"], "< 100",
               load["predict_p99_ms"] < 100),
        target("peak RSS (MiB) vs budget", load["peak_rss_mib"], f"<= {BUDGET_MIB}",
               load["peak_rss_mib"] <= BUDGET_MIB),
        target("final accuracy: learner - offline (pts)", online["difference"], "|x| <= 2",
               abs(online["difference"]) <= 2),
        target("kill -9 restarts under load", kills["restarts"], ">= 20",
               kills["restarts"] >= 20),
        target("acknowledged samples lost + duplicated", kills["lost"] + kills["duplicated"],
               "0", kills["lost"] + kills["duplicated"] == 0 and kills["trained_once"]),
    ]
    write_result("learner", res)
    atomic_write_text(RESULTS / "learner.md", markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
