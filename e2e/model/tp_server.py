"""A small tensor-parallel language model that really serves over HTTP.

Every rank of a torch.distributed (gloo) group holds one shard of the
weights and takes part in every forward pass through collective ops; rank 0
(the leader) also serves HTTP, the other ranks are headless. The process
group comes up from the environment alone (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT, as muster's agent sets them); run without them it is a group
of one.

Model: a character-level transformer trained on corpus.txt, so that it
answers readable text (greedy decoding recites the corpus: "muster " ->
"makes a model too big for one machine serve like one pod."). The weights
come from --weights, by default <repo>/.local/model/weights-<fingerprint>.pt
(train.py says how they are made and where); a missing file is trained
first (10 to 20 s on one core; when several ranks start at once on one
machine, one trains and the others wait for its file). Every rank loads the
whole weights, takes rank 0's copy (a broadcast, so that ranks on different
machines cannot disagree) and keeps only its shard:
  vocabulary   96 characters: "\\n" (id 0) and printable ASCII 32..126 (ids 1..95)
  embedding    96 x 64, vocab-parallel (rows split across ranks, all_reduce)
  2 blocks of  pre-LayerNorm causal self-attention, 4 heads x 16 with ALiBi
               position biases (no position table; context window 256),
               heads split across ranks (QKV column-parallel, output
               projection row-parallel + all_reduce), then pre-LayerNorm
               MLP 64 -> 128 -> 64 with GELU (first layer column-parallel,
               second row-parallel + all_reduce, Megatron-style)
  output       final LayerNorm, 64 x 96 projection vocab-parallel
               (column-parallel), shards gathered on the leader
Shards follow torch.tensor_split, so uneven world sizes work too (a rank
beyond the 4th holds no heads and computes zeros for them). The forward
pass runs in float64, so the different summation orders of 1, 2 or 4 ranks
change logits by about 1e-15 and every world size picks the same tokens.

HTTP on the leader (stdlib http.server), at MUSTER_ADDRESS (else 127.0.0.1)
and --port / MUSTER_PORT / 8000; the port is bound only once the process
group is up and a warm-up forward pass has run, so "accepts TCP" (what
muster's agent --port checks) already means ready:
  GET  /health          200 {"status":"ok","world_size":N,"rank":0}
  POST /v1/predict      {"inputs": [[ids...], ...]} or {"input": [ids...]},
                        optional "top_k" (default 5)
                        -> {"outputs": [{"argmax": [next-token id after each
                           position], "next_token": id, "next_char": c,
                           "top_k": [{"token": id, "logit": x}, ...]}, ...],
                            "world_size", "generation", "ranks_participated", "ms"}
  POST /v1/completions  {"prompt": "text", "max_tokens": 16, "stream": false}
                        greedy decoding, one distributed forward step per token;
                        stream=true: text/event-stream, one
                        `data: {"token": c, "index": i}` event per token, then
                        `data: [DONE]`; otherwise one JSON with the whole "text".
  Bad requests get 400 (404 unknown path, 405 wrong method, 413 too large)
  with {"error": "..."}.
Each decode step sleeps --step-delay-ms (default 30) on the leader before
its forward pass: simulated decode latency, so that streaming is observable
on a toy model that would otherwise finish in a few milliseconds.

Coordination: one request at a time goes through the model (a lock on the
leader). For each forward step the leader broadcasts a fixed-size command
tensor [op, batch, length, flags], then the token ids; every rank runs its
shard and the collectives; the leader gathers the logits. Workers loop on
commands. When idle, the leader broadcasts a no-op every --heartbeat
seconds so that a dead peer is noticed and no rank sits in a collective
longer than --collective-timeout.

Shutdown: SIGTERM/SIGINT on the leader stops the HTTP server, lets the
request in flight finish (a stream ends early), tells the workers to exit
and exits 0. A worker that gets SIGTERM waits briefly for that exit command
and exits 0. A rank whose peers vanish errors out of a collective and exits
1, which is what makes muster restart the group.

--selftest: no HTTP; the leader prints one JSON line with fixed predictions
and a greedy completion of "muster ", every rank exits 0.
"""
import argparse
import datetime
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse

T0 = time.monotonic()

# Gloo picks its network interface from the host name by default; on one
# machine every member shares loopback.
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

# train.py, next to this file (the script's directory is on sys.path):
# the architecture, the tokenizer and the weights file. No __pycache__ in
# the repository.
sys.dont_write_bytecode = True
from train import CTX, D, DH, FF, HEADS, LAYERS, SLOPES, V, VOCAB, alibi, default_path, encode, load_or_train  # noqa: E402

DTYPE = torch.float64  # inference: identical argmax whatever the summation order

MAX_BATCH = 64
MAX_TOKENS = 256
MAX_BODY = 1 << 20

OP_EXIT, OP_NOOP, OP_FORWARD = 0, 1, 2
FLAG_LAST_ONLY = 1


def log(msg):
    print(f"tp_server: {msg}", flush=True)


def bounds(n, rank, world):
    """This rank's [lo, hi) of n items, as torch.tensor_split splits them."""
    q, r = divmod(n, world)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


class Shard:
    """One rank's slice of the model and its part of the forward pass."""

    def __init__(self, rank, world, weights):
        """weights: the whole model (train.py's names and shapes) on every
        rank; keep a slice, in float64."""
        self.rank, self.world = rank, world

        def part(name, *index):
            t = weights[name]
            return (t[index] if index else t).to(DTYPE).clone()

        self.vlo, self.vhi = bounds(V, rank, world)
        self.vmax = -(-V // world)  # largest vocab shard: the gather size
        hlo, hhi = bounds(HEADS, rank, world)
        flo, fhi = bounds(FF, rank, world)
        self.slopes = SLOPES[hlo:hhi]  # ALiBi slopes of my heads
        all_ = slice(None)
        self.tok = part("tok", slice(self.vlo, self.vhi))  # vocab-parallel
        self.layers = []
        for i in range(LAYERS):
            self.layers.append({
                "wqkv": part(f"{i}.wqkv", all_, all_, slice(hlo, hhi)),  # column-parallel: my heads
                "wo": part(f"{i}.wo", slice(hlo, hhi)),  # row-parallel
                "w1": part(f"{i}.w1", all_, slice(flo, fhi)),  # column-parallel
                "b1": part(f"{i}.b1", slice(flo, fhi)),
                "w2": part(f"{i}.w2", slice(flo, fhi)),  # row-parallel
                "b2": part(f"{i}.b2"),  # added once, after the all_reduce
            })
        self.wout = part("wout", all_, slice(self.vlo, self.vhi))  # vocab-parallel
        self.params = sum(t.numel() for t in [self.tok, self.wout]) + sum(
            t.numel() for layer in self.layers for t in layer.values())

    @torch.no_grad()
    def forward(self, ids, last_only):
        """Every rank calls this with the same ids [B, T]. Returns, on the
        leader, the logits [B, T or 1, V] and how many ranks took part."""
        B, T = ids.shape
        mine = (ids >= self.vlo) & (ids < self.vhi)
        if self.vhi > self.vlo:
            x = self.tok[torch.where(mine, ids - self.vlo, 0)] * mine.unsqueeze(-1)
        else:
            x = torch.zeros(B, T, D, dtype=DTYPE)
        x = x.contiguous()
        dist.all_reduce(x)
        bias = alibi(T, self.slopes, DTYPE)  # [my heads, T, T], causal
        for p in self.layers:
            h = F.layer_norm(x, (D,))
            q, k, v = torch.einsum("btd,dshk->sbhtk", h, p["wqkv"]).unbind(0)
            att = ((q @ k.transpose(-1, -2)) * DH ** -0.5 + bias).softmax(-1)
            o = torch.einsum("bhtk,hkd->btd", att @ v, p["wo"]).contiguous()
            dist.all_reduce(o)
            x = x + o
            h = F.layer_norm(x, (D,))
            o = (F.gelu(h @ p["w1"] + p["b1"]) @ p["w2"]).contiguous()
            dist.all_reduce(o)
            x = x + o + p["b2"]
        x = F.layer_norm(x, (D,))
        if last_only:
            x = x[:, -1:]
        part = x @ self.wout  # [B, T', my vocab]
        # Gather the vocab shards on the leader, padded to one size, with a
        # last slot that each rank sets to 1: the leader counts the ranks
        # whose shard it received.
        padded = torch.zeros(*part.shape[:2], self.vmax + 1, dtype=DTYPE)
        padded[..., : part.shape[-1]] = part
        padded[..., -1] = 1.0
        if self.rank == 0:
            parts = [torch.zeros_like(padded) for _ in range(self.world)]
            dist.gather(padded, parts, dst=0)
            sizes = [hi - lo for lo, hi in (bounds(V, r, self.world) for r in range(self.world))]
            logits = torch.cat([p[..., :n] for p, n in zip(parts, sizes)], dim=-1)
            ranks = int(sum(p[0, 0, -1].item() for p in parts))
            return logits, ranks
        dist.gather(padded, dst=0)
        return None, None


class Leader:
    """Rank 0's side of the command protocol. Callers hold self.lock."""

    def __init__(self, shard, step_delay):
        self.shard = shard
        self.world = shard.world
        self.step_delay = step_delay
        self.lock = threading.Lock()
        self.last_command = time.monotonic()
        self.stopping = threading.Event()

    def _command(self, op, b=0, t=0, flags=0):
        dist.broadcast(torch.tensor([op, b, t, flags], dtype=torch.int64), src=0)
        self.last_command = time.monotonic()

    def forward(self, seqs, last_only=False):
        B, T = len(seqs), max(len(s) for s in seqs)
        ids = torch.zeros(B, T, dtype=torch.int64)  # right padding: causal attention ignores it
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.int64)
        self._command(OP_FORWARD, B, T, FLAG_LAST_ONLY if last_only else 0)
        dist.broadcast(ids, src=0)
        return self.shard.forward(ids, last_only)

    def noop(self):
        self._command(OP_NOOP)

    def exit_workers(self):
        self._command(OP_EXIT)
        dist.barrier()

    def generate(self, prompt_ids, max_tokens, delay=True):
        """Greedy decoding; yields (token id, ranks participated) per step."""
        ids = list(prompt_ids) or [0]
        for _ in range(max_tokens):
            if self.stopping.is_set():
                return
            if delay and self.step_delay > 0:
                time.sleep(self.step_delay)  # simulated decode latency
            logits, n = self.forward([ids[-CTX:]], last_only=True)
            tok = int(logits[0, -1].argmax())
            ids.append(tok)
            yield tok, n


def predict(leader, seqs, top_k):
    logits, n = leader.forward(seqs)
    outputs = []
    for i, s in enumerate(seqs):
        lg = logits[i, : len(s)]
        vals, idx = lg[-1].topk(top_k)
        nxt = int(idx[0])
        outputs.append({
            "argmax": lg.argmax(-1).tolist(),
            "next_token": nxt,
            "next_char": VOCAB[nxt],
            "top_k": [{"token": int(t), "logit": round(float(v), 5)} for v, t in zip(vals, idx)],
        })
    return outputs, n


def worker_loop(shard):
    """Ranks > 0: run commands from the leader until told to exit."""
    cmd = torch.zeros(4, dtype=torch.int64)
    while True:
        dist.broadcast(cmd, src=0)
        op, b, t, flags = cmd.tolist()
        if op == OP_EXIT:
            dist.barrier()
            return
        if op == OP_NOOP:
            continue
        if op != OP_FORWARD:
            raise RuntimeError(f"unknown command {op}")
        ids = torch.empty(b, t, dtype=torch.int64)
        dist.broadcast(ids, src=0)
        shard.forward(ids, bool(flags & FLAG_LAST_ONLY))


class BadRequest(Exception):
    def __init__(self, msg, status=400):
        super().__init__(msg)
        self.status = status


def _int(v, name, lo, hi):
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise BadRequest(f"{name} must be an integer in [{lo}, {hi}], got {json.dumps(v)}")
    return v


def parse_predict(body):
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object with \"inputs\" or \"input\"")
    if "inputs" in body:
        seqs = body["inputs"]
        if not isinstance(seqs, list) or not seqs:
            raise BadRequest("\"inputs\" must be a non-empty list of token id lists")
    elif "input" in body:
        seqs = [body["input"]]
    else:
        raise BadRequest("missing \"inputs\" (list of token id lists) or \"input\" (token id list)")
    if len(seqs) > MAX_BATCH:
        raise BadRequest(f"at most {MAX_BATCH} inputs per request, got {len(seqs)}")
    for i, s in enumerate(seqs):
        if not isinstance(s, list) or not 1 <= len(s) <= CTX:
            raise BadRequest(f"input {i} must be a list of 1 to {CTX} token ids")
        for t in s:
            _int(t, f"input {i} token", 0, V - 1)
    top_k = _int(body.get("top_k", 5), "top_k", 1, V)
    return seqs, top_k


def parse_completion(body):
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object with \"prompt\"")
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest("\"prompt\" must be a string")
    max_tokens = _int(body.get("max_tokens", 16), "max_tokens", 1, MAX_TOKENS)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("\"stream\" must be true or false")
    return encode(prompt), max_tokens, stream


def make_handler(leader, fail):
    world = leader.world
    gen_env = os.environ.get("MUSTER_GENERATION", "")
    generation = int(gen_env) if gen_env.isdigit() else None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "muster-tp/1"
        disable_nagle_algorithm = True  # headers and body are separate writes

        def log_message(self, fmt, *args):  # one line per request instead, see _log
            pass

        def _log(self, status, tokens, t0, extra=""):
            log(f"{self.command} {self.path} {status} tokens={tokens} {1000 * (time.monotonic() - t0):.1f}ms{extra}")

        def _json(self, status, obj):
            data = (json.dumps(obj) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _body(self):
            n = self.headers.get("Content-Length")
            if n is None or not n.isdigit():
                self.close_connection = True
                raise BadRequest("a JSON body with Content-Length is required")
            if int(n) > MAX_BODY:
                self.close_connection = True
                raise BadRequest(f"body larger than {MAX_BODY} bytes", 413)
            raw = self.rfile.read(int(n))
            try:
                return json.loads(raw)
            except (ValueError, RecursionError) as e:
                raise BadRequest(f"body is not valid JSON: {e}")

        def do_GET(self):
            t0 = time.monotonic()
            path = urllib.parse.urlsplit(self.path).path
            if path == "/health":
                if leader.stopping.is_set():
                    self._json(503, {"status": "stopping", "world_size": world, "rank": 0})
                    self._log(503, 0, t0)
                else:
                    self._json(200, {"status": "ok", "world_size": world, "rank": 0})
                return
            if path in ("/v1/predict", "/v1/completions"):
                self._error(BadRequest(f"{path} takes POST", 405), t0)
            else:
                self._error(BadRequest(f"no such path {path}", 404), t0)

        def do_POST(self):
            t0 = time.monotonic()
            path = urllib.parse.urlsplit(self.path).path
            try:
                if path == "/v1/predict":
                    seqs, top_k = parse_predict(self._body())
                    self._predict(seqs, top_k, t0)
                elif path == "/v1/completions":
                    prompt, max_tokens, stream = parse_completion(self._body())
                    self._complete(prompt, max_tokens, stream, t0)
                else:
                    self.close_connection = True  # its body is not read
                    if path == "/health":
                        raise BadRequest("/health takes GET", 405)
                    raise BadRequest(f"no such path {path}", 404)
            except BadRequest as e:
                self._error(e, t0)
            except Exception as e:  # a bug, not the client's fault: say so, keep serving
                self.close_connection = True
                self._json(500, {"error": f"internal error: {e!r}"})
                self._log(500, 0, t0, f" error={e!r}")

        def _error(self, e, t0):
            self._json(e.status, {"error": str(e)})
            self._log(e.status, 0, t0, f" error={str(e)!r}")

        def _fatal(self, e, streaming):
            """A collective failed: answer 503 (or end the stream with an
            error event) and exit 1, so that muster restarts the group."""
            msg = f"model group failed, restarting: {e}"
            try:
                if streaming:
                    self.wfile.write(f"data: {json.dumps({'error': msg})}\n\n".encode())
                else:
                    self.close_connection = True
                    self._json(503, {"error": msg})
                self.wfile.flush()
            except OSError:
                pass
            fail(e)

        def _model(self):
            """The model lock, or 503 while shutting down."""
            leader.lock.acquire()
            if leader.stopping.is_set():
                leader.lock.release()
                raise BadRequest("server is shutting down", 503)

        def _predict(self, seqs, top_k, t0):
            self._model()
            try:
                outputs, n = predict(leader, seqs, top_k)
            except Exception as e:
                self._fatal(e, streaming=False)
            finally:
                leader.lock.release()
            self._json(200, {"outputs": outputs, "world_size": world, "generation": generation,
                             "ranks_participated": n, "ms": round(1000 * (time.monotonic() - t0), 2)})
            self._log(200, sum(len(s) for s in seqs), t0)

        def _complete(self, prompt, max_tokens, stream, t0):
            self._model()
            toks, ranks = [], world
            try:
                steps = leader.generate(prompt, max_tokens)
                if stream:
                    self.close_connection = True
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Cache-Control", "no-cache")
                    self.send_header("X-Accel-Buffering", "no")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.flush()
                while True:
                    try:
                        tok, n = next(steps)
                    except StopIteration:
                        break
                    except Exception as e:
                        self._fatal(e, streaming=stream)
                    toks.append(tok)
                    ranks = min(ranks, n)
                    if stream:
                        ev = json.dumps({"token": VOCAB[tok], "index": len(toks) - 1})
                        self.wfile.write(f"data: {ev}\n\n".encode())
                        self.wfile.flush()
                if stream:
                    if leader.stopping.is_set() and len(toks) < max_tokens:
                        self.wfile.write(b'data: {"error": "server is shutting down"}\n\n')
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self._log(499, len(prompt) + len(toks), t0, " client went away")
                return
            finally:
                leader.lock.release()
            if not stream:
                self._json(200, {"text": "".join(VOCAB[t] for t in toks), "token_ids": toks,
                                 "prompt_tokens": len(prompt), "completion_tokens": len(toks),
                                 "world_size": world, "generation": generation,
                                 "ranks_participated": ranks})
            self._log(200, len(prompt) + len(toks), t0, " stream" if stream else "")

    return Handler


def free_port(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=int(os.environ.get("MUSTER_PORT") or 8000))
    ap.add_argument("--host", default=os.environ.get("MUSTER_ADDRESS") or os.environ.get("POD_IP") or "127.0.0.1",
                    help="address the leader serves on (default MUSTER_ADDRESS, else POD_IP, else 127.0.0.1)")
    ap.add_argument("--weights", help="weights file, trained there first when missing "
                    "(default <repo>/.local/model/weights-<fingerprint of corpus.txt, train.py, seed>.pt)")
    ap.add_argument("--seed", type=int, default=0, help="training seed, when the weights are trained")
    ap.add_argument("--train-timeout", type=float, default=600.0,
                    help="seconds to wait for another process training the same weights file")
    ap.add_argument("--step-delay-ms", type=float, default=30.0,
                    help="simulated decode latency slept before each generated token")
    ap.add_argument("--collective-timeout", type=float, default=60.0, help="seconds")
    ap.add_argument("--heartbeat", type=float, default=5.0,
                    help="seconds between no-op commands when idle")
    ap.add_argument("--selftest", action="store_true", help="print fixed predictions as JSON and exit")
    args = ap.parse_args()

    if "RANK" not in os.environ:  # standalone: a group of one
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port("127.0.0.1")))
    torch.set_num_threads(1)  # ranks share the machine's cores
    # Before the process group: training (when the file is missing) may
    # take longer than the group's timeouts allow a rank to be late. A
    # signal meanwhile ends the process at once.
    path = args.weights or default_path(args.seed)
    try:
        weights = load_or_train(path, args.seed, args.train_timeout, log)
    except Exception as e:
        log(f"no weights from {path}: {e}")
        sys.exit(1)
    log(f"weights ready {time.monotonic() - T0:.1f}s after start")

    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())

    dist.init_process_group("gloo", init_method="env://",
                            timeout=datetime.timedelta(seconds=args.collective_timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    gen = os.environ.get("MUSTER_GENERATION", "-")
    weights = leaders_weights(weights, rank, world)
    shard = Shard(rank, world, weights)
    # Warm-up: the same forward pass on every rank, no command needed.
    shard.forward(torch.tensor([encode("warm up")]), last_only=False)

    if rank != 0:
        code = run_worker(shard, stop, rank, world, gen)
    else:
        code = run_leader(shard, stop, args, world, gen)
    # Skip the interpreter's teardown: destroying a live gloo process group
    # while its threads run can abort ("terminate called without an active
    # exception", exit 134) and turn a clean stop into a failure.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def leaders_weights(weights, rank, world):
    """Rank 0's weights on every rank: ranks on different machines may have
    trained their own files, which a different CPU could round differently."""
    if world == 1:
        return weights
    names = sorted(weights)
    flat = torch.cat([weights[k].reshape(-1).float() for k in names])
    mine = flat.clone()
    dist.broadcast(flat, src=0)
    if not torch.equal(flat, mine):
        log(f"rank {rank}: my weights differ from rank 0's; using rank 0's")
    out, at = {}, 0
    for k in names:
        n = weights[k].numel()
        out[k] = flat[at:at + n].view_as(weights[k])
        at += n
    return out


def run_worker(shard, stop, rank, world, gen):
    log(f"rank {rank}/{world} generation {gen}: ready in {time.monotonic() - T0:.1f}s, "
        f"{shard.params} parameters in this shard")
    result = {}

    def loop():
        try:
            worker_loop(shard)
            result["code"] = 0
        except Exception as e:  # a peer vanished, or a collective timed out
            result["code"] = 0 if stop.is_set() else 1
            result["err"] = e

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    while th.is_alive() and not stop.wait(0.2):
        pass
    if stop.is_set():
        # Usually the leader got the same signal and is about to send exit.
        th.join(5.0)
        log(f"rank {rank}/{world}: stopping on signal")
        return result.get("code", 0)
    if result.get("code"):
        log(f"rank {rank}/{world}: collective failed, exiting 1 so the group restarts: {result.get('err')}")
    return result.get("code", 0)


def run_leader(shard, stop, args, world, gen):
    leader = Leader(shard, args.step_delay_ms / 1000.0)
    if args.selftest:
        with leader.lock:
            outputs, n = predict(leader, [encode("hello muster"), [1, 2, 3, 4, 5], [0]], 3)
            text = "".join(VOCAB[t] for t, _ in leader.generate(encode("muster "), 16, delay=False))
            leader.exit_workers()
        print(json.dumps({"selftest": True, "world_size": world, "ranks_participated": n,
                          "predict": outputs, "completion": text}), flush=True)
        return 0

    def fail(e):
        # The process group is broken (a peer died): no answer can be
        # trusted any more. Exit non-zero so muster restarts the group.
        log(f"collective failed, exiting 1 so the group restarts: {e}")
        os._exit(1)

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    httpd = ThreadingHTTPServer((args.host, args.port), make_handler(leader, fail))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    log(f"rank 0/{world} generation {gen}: ready in {time.monotonic() - T0:.1f}s, "
        f"serving on http://{args.host}:{args.port} ({shard.params} parameters in this shard)")

    while not stop.wait(0.5):
        if time.monotonic() - leader.last_command >= args.heartbeat and leader.lock.acquire(blocking=False):
            try:
                leader.noop()
            except Exception as e:
                fail(e)
            finally:
                leader.lock.release()

    log("stopping on signal: draining, then telling the workers to exit")
    leader.stopping.set()
    threading.Thread(target=httpd.shutdown, daemon=True).start()
    if not leader.lock.acquire(timeout=5.0):
        log("a request is still running after 5s; exiting without telling the workers")
        return 0
    try:
        leader.exit_workers()
    except Exception as e:
        log(f"workers already gone: {e}")
    return 0


if __name__ == "__main__":
    main()
