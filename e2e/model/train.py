"""Trains the weights of tp_server.py's model on corpus.txt, on CPU.

The model (the reference, unsharded forward pass; tp_server.py runs the
same arithmetic split across ranks):
  vocabulary   96 characters: "\\n" (id 0) and printable ASCII 32..126 (ids 1..95)
  embedding    96 x 64
  2 blocks of  pre-LayerNorm causal self-attention, 4 heads x 16, with
               ALiBi position biases (head h adds -(t - s) / 2^(h+1) to the
               score of query t for key s: no position table, so any length
               up to the context window works although training sees 64),
               then pre-LayerNorm MLP 64 -> 128 -> 64 with GELU
  output       final LayerNorm, 64 x 96 projection
LayerNorms have no weights; 78,208 parameters.

Training: next-character prediction on windows of 64 characters of
corpus.txt (read as a loop), half of them starting at a line start, 8 per
step, 250 steps of Adam with a cosine learning rate from 1e-2; fixed seeds,
one thread, so the same torch gives the same weights bit for bit. It takes
about 10 to 20 seconds on one core and reaches a loss of about 0.13 nats per
character: greedy decoding then recites the corpus.

Usage:
  /usr/bin/python3 e2e/model/train.py             # train into the default path (unless it is there)
  /usr/bin/python3 e2e/model/train.py --force     # train again
  /usr/bin/python3 e2e/model/train.py --check     # and recite every line from its first words
  /usr/bin/python3 e2e/model/train.py --print-path

The default path is <repo>/.local/model/weights-<fingerprint>.pt, the
fingerprint a hash of corpus.txt, this file and the seed: editing either
trains new weights on the next start. tp_server.py calls load_or_train,
which is safe when several processes start at once: one trains (under a
lock file), the others wait for it and load its file.
"""
import argparse
import fcntl
import hashlib
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus.txt")
REPO = os.path.dirname(os.path.dirname(HERE))

VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
CHAR_ID = {c: i for i, c in enumerate(VOCAB)}
UNKNOWN_ID = CHAR_ID["?"]
V, D, HEADS, DH, FF, LAYERS, CTX = len(VOCAB), 64, 4, 16, 128, 2, 256
SLOPES = [2.0 ** -(h + 1) for h in range(HEADS)]  # ALiBi, one per head
ARCH = {"V": V, "D": D, "HEADS": HEADS, "DH": DH, "FF": FF, "LAYERS": LAYERS, "CTX": CTX, "SLOPES": SLOPES}
STEPS, BATCH, LENGTH, LR = 250, 8, 64, 1e-2
FORMAT = "muster-tp-model/1"


def encode(text):
    return [CHAR_ID.get(c, UNKNOWN_ID) for c in text]


def decode(ids):
    return "".join(VOCAB[i] for i in ids)


def alibi(T, slopes, dtype=torch.float32):
    """Attention biases [len(slopes), T, T]: -slope * distance to the past,
    -inf for the future."""
    r = torch.arange(T)
    dist = (r[:, None] - r[None, :]).to(dtype)
    bias = -torch.tensor(slopes, dtype=dtype)[:, None, None] * dist
    return bias.masked_fill(dist < 0, float("-inf"))


def init_weights(seed):
    """The untrained weights: name -> tensor, in a fixed order."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale):
        return torch.randn(*shape, generator=g) * scale

    w = {"tok": randn(V, D, scale=1.0)}
    for i in range(LAYERS):
        w[f"{i}.wqkv"] = randn(D, 3, HEADS, DH, scale=D ** -0.5)
        w[f"{i}.wo"] = randn(HEADS, DH, D, scale=(HEADS * DH) ** -0.5 / math.sqrt(2 * LAYERS))
        w[f"{i}.w1"] = randn(D, FF, scale=D ** -0.5)
        w[f"{i}.b1"] = torch.zeros(FF)
        w[f"{i}.w2"] = randn(FF, D, scale=FF ** -0.5 / math.sqrt(2 * LAYERS))
        w[f"{i}.b2"] = torch.zeros(D)
    w["wout"] = randn(D, V, scale=D ** -0.5)
    return w


def forward(w, ids):
    """The whole model on one process: logits [B, T, V] for ids [B, T]."""
    T = ids.shape[1]
    x = w["tok"][ids]
    bias = alibi(T, SLOPES, x.dtype)
    for i in range(LAYERS):
        h = F.layer_norm(x, (D,))
        q, k, v = torch.einsum("btd,dshk->sbhtk", h, w[f"{i}.wqkv"]).unbind(0)
        att = ((q @ k.transpose(-1, -2)) * DH ** -0.5 + bias).softmax(-1)
        x = x + torch.einsum("bhtk,hkd->btd", att @ v, w[f"{i}.wo"])
        h = F.layer_norm(x, (D,))
        x = x + F.gelu(h @ w[f"{i}.w1"] + w[f"{i}.b1"]) @ w[f"{i}.w2"] + w[f"{i}.b2"]
    return F.layer_norm(x, (D,)) @ w["wout"]


def train(text, seed=0):
    """Trains on text; returns (weights, final loss, seconds)."""
    t0 = time.monotonic()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic, and polite on a shared machine
    try:
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed + 1)
        data = torch.tensor(encode(text))
        n = len(data)
        loop = torch.cat([data, data[: LENGTH + 1]])  # the corpus read as a loop
        starts = torch.tensor([0] + [i + 1 for i, c in enumerate(text[:-1]) if c == "\n"])
        w = {k: t.requires_grad_() for k, t in init_weights(seed).items()}
        opt = torch.optim.Adam(w.values(), lr=LR)
        offsets = torch.arange(LENGTH + 1)
        for step in range(STEPS):
            for group in opt.param_groups:
                group["lr"] = LR * 0.5 * (1 + math.cos(math.pi * step / STEPS))
            anywhere = torch.randint(0, n, (BATCH,), generator=g)
            at_line = starts[torch.randint(0, len(starts), (BATCH,), generator=g)]
            begin = torch.where(torch.arange(BATCH) < BATCH // 2, at_line, anywhere)
            seq = loop[begin[:, None] + offsets]
            logits = forward(w, seq[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, V), seq[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        w = {k: t.detach() for k, t in w.items()}
        return w, float(loss), time.monotonic() - t0
    finally:
        torch.set_num_threads(threads)


def fingerprint(seed=0):
    h = hashlib.sha256()
    for path in (CORPUS, os.path.abspath(__file__)):
        with open(path, "rb") as f:
            h.update(f.read())
    h.update(f"seed={seed}".encode())
    return h.hexdigest()


def default_path(seed=0):
    return os.path.join(REPO, ".local", "model", f"weights-{fingerprint(seed)[:16]}.pt")


def save(path, w, meta):
    """Writes path atomically: a temporary file in the same directory, then
    a rename, so that a reader sees the whole file or none."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(dict(meta, format=FORMAT, arch=ARCH, weights=w), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(path):
    obj = torch.load(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("arch") != ARCH:
        got = obj.get("arch") if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path} holds weights for another model ({got}, want {ARCH}): "
                         f"delete it, or train it again with train.py --force --out {path}")
    want = init_weights(0)
    w = obj["weights"]
    if w.keys() != want.keys() or any(w[k].shape != want[k].shape for k in want):
        raise ValueError(f"{path}: tensors do not match the model; delete it or train again")
    return w


def train_and_save(path, seed, log):
    with open(CORPUS, encoding="utf-8") as f:
        text = f.read()
    log(f"training the model on {CORPUS} ({len(text)} characters), {STEPS} steps, "
        f"into {path or 'memory only'}")
    w, loss, secs = train(text, seed)
    log(f"trained in {secs:.1f}s, loss {loss:.3f}")
    if path:
        save(path, w, {"fingerprint": fingerprint(seed), "seed": seed, "loss": loss, "seconds": secs})
    return w


def load_or_train(path=None, seed=0, timeout=600.0, log=print):
    """The weights at path (default: default_path(seed)); when the file is
    missing, trains them and writes it first. Concurrent callers on one
    machine take turns on path + ".lock": the first trains, the others wait
    (up to timeout seconds) and load its file. When the directory cannot be
    written, trains in memory."""
    path = path or default_path(seed)
    if os.path.exists(path):
        log(f"loading {path}")
        return load(path)
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        lock = open(path + ".lock", "a")
    except OSError as e:
        log(f"cannot write next to {path} ({e}): training in memory")
        return train_and_save(None, seed, log)
    with lock:
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    log(f"another process is training {path}; waiting up to {timeout:.0f}s for it")
                    waited = True
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path}.lock still held after {timeout:.0f}s: is a training "
                                       f"process stuck? Stop it, or train with train.py --out {path}")
                time.sleep(0.2)
        if os.path.exists(path):  # another process trained it while we waited
            log(f"loading {path}")
            return load(path)
        return train_and_save(path, seed, log)  # the lock goes with the file


def recite(w, prompt, n):
    """Greedy decoding with the reference forward pass."""
    ids = encode(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(forward(w, torch.tensor([ids[-CTX:]]))[0, -1].argmax()))
    return decode(ids[len(prompt):])


def unique_prefix(line, lines):
    """The shortest run of whole words starting line that no other line starts with."""
    words = line.split(" ")
    for n in range(1, len(words)):
        prefix = " ".join(words[:n]) + " "
        if sum(other.startswith(prefix) for other in lines) == 1:
            return prefix
    return line


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="weights file (default: .local/model/weights-<fingerprint>.pt in the repository)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="train even when the file exists")
    ap.add_argument("--check", action="store_true", help="then recite every corpus line from its first words (as few as tell it apart)")
    ap.add_argument("--print-path", action="store_true", help="print the default path and exit")
    args = ap.parse_args()
    path = args.out or default_path(args.seed)
    if args.print_path:
        print(path)
        return 0

    def log(msg):
        print(f"train: {msg}", file=sys.stderr, flush=True)

    if args.force:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        w = train_and_save(path, args.seed, log)
    else:
        w = load_or_train(path, args.seed, log=log)
    print(path)
    if args.check:
        with open(CORPUS, encoding="utf-8") as f:
            lines = f.read().splitlines()
        ok = 0
        for line in lines:
            prompt = unique_prefix(line, lines)
            got = recite(w, prompt, len(line) - len(prompt))
            ok += prompt + got == line
            print(f"{'ok ' if prompt + got == line else 'BAD'} {prompt}{got}")
        print(f"{ok}/{len(lines)} lines recited from their first words")
    return 0


if __name__ == "__main__":
    sys.exit(main())
