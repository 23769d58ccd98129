#!/usr/bin/python3
"""PyTorch-Python reference for the canonical workloads of shared/bench/WORKLOADS.md.

An idiomatic implementation (nn.Embedding / nn.EmbeddingBag, nn.Linear, torch.optim) of exactly the
workloads `recsys bench` runs, printing the same JSON lines. Each workload runs twice: dense
embeddings with torch.optim.Adam, and sparse embeddings with SparseAdam (embeddings) + Adam (the
rest); the faster variant is reported, as WORKLOADS.md prescribes.

    python3 scripts/bench_reference.py --threads 2 [--workloads twotower_ssl,din,dien] [--steps 30]
"""
import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

BATCHES, WARMUP = 8, 5


def zipf_sampler(n, exponent, rng):
    """Zipf over ranks 0..n-1, P(k) ~ (k+1)^-exponent; returns (draw(shape), log_prob(ranks))."""
    p = torch.arange(1, n + 1, dtype=torch.float64) ** -exponent
    norm = p.sum()
    cdf = torch.cumsum(p, 0) / norm

    def draw(shape):
        if isinstance(shape, int):
            shape = (shape,)
        u = torch.rand(shape, generator=rng, dtype=torch.float64)
        return torch.searchsorted(cdf, u).clamp_(max=n - 1)

    def log_prob(rank):
        return -exponent * torch.log(rank.double() + 1.0) - torch.log(norm)

    return draw, log_prob


def integers(rng, low, high, shape):
    """Uniform int64 in [low, high)."""
    return torch.randint(low, high, shape, generator=rng)


def mlp(sizes, act):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act(sizes[i + 1]))
    return nn.Sequential(*layers)


def make_optimizers(model, sparse):
    emb = [p for n, p in model.named_parameters() if "emb" in n]
    dense = [p for n, p in model.named_parameters() if "emb" not in n]
    if sparse:
        return [torch.optim.SparseAdam(emb, lr=1e-3), torch.optim.Adam(dense, lr=1e-3)]
    return [torch.optim.Adam(emb + dense, lr=1e-3)]


# ----------------------------------------------------------------------------- twotower_ssl
class Tower(nn.Module):
    def __init__(self, vocabs, dim, hidden, sparse):
        super().__init__()
        self.emb = nn.ModuleList(
            nn.EmbeddingBag(v, dim, mode="mean", sparse=sparse, padding_idx=0) for v in vocabs)
        for e in self.emb:
            nn.init.normal_(e.weight, std=0.05)
            with torch.no_grad():
                e.weight[0].zero_()
        self.mlp = mlp([len(vocabs) * dim] + hidden, lambda _: nn.ReLU())

    def forward(self, feats):
        x = torch.cat([e(f) for e, f in zip(self.emb, feats)], 1)
        return F.normalize(self.mlp(x), dim=1)


class TwoTower(nn.Module):
    def __init__(self, sparse, users=100000, items=200000, dim=64, hidden=(256, 128, 64)):
        super().__init__()
        hidden = list(hidden)
        self.user = Tower([users + 2, items + 2, 12, 5], dim, hidden, sparse)
        self.item = Tower([items + 2, 1002, 10002, 502], dim, hidden, sparse)


def twotower_batches(rng, n=1024, m=1024, users=100000, items=200000):
    draw, log_prob = zipf_sampler(items, 1.1, rng)

    def uni(vocab, shape):
        return integers(rng, 2, vocab + 2, shape)

    # An item's categories, keywords and city are attributes of the item (as in a catalogue),
    # drawn once per item id: the same item in two rows is the same input (as in `recsys bench`).
    rows_all = items + 2
    attrs = [uni(1000, (rows_all, 3)), uni(10000, (rows_all, 5)), uni(500, (rows_all, 1))]

    def item_feats(ids, rows):
        flat = ids.reshape(rows)
        return [ids] + [a[flat] for a in attrs]

    out = []
    for _ in range(BATCHES):
        ranks = draw(n)
        user = [uni(users, (n, 1)), 2 + draw((n, 20)), uni(10, (n, 1)), uni(3, (n, 1))]
        item = item_feats((2 + ranks).reshape(n, 1), n)
        log_q = log_prob(ranks).float()
        ssl = item_feats(uni(items, (m, 1)), m)
        out.append((user, item, log_q, ssl))
    return out


def complementary_views(feats):
    """A random half of the 4 features masked with the default index (1) in view 1, the rest in view 2."""
    m = feats[0].shape[0]
    group = torch.rand(m, len(feats)).argsort(1).argsort(1) < len(feats) // 2
    v1, v2 = [], []
    for f, x in enumerate(feats):
        default = torch.zeros_like(x[:1])
        default[0, 0] = 1
        g = group[:, f:f + 1]
        v1.append(torch.where(g, default, x))
        v2.append(torch.where(~g, default, x))
    return v1, v2


def twotower_step(model, opts, batch, tau=0.05):
    user, item, log_q, ssl = batch
    for o in opts:
        o.zero_grad()
    a = model.user(user)
    b = model.item(item)
    logits = a @ b.t() / tau - log_q
    target = torch.arange(a.shape[0])
    main = F.cross_entropy(logits, target)
    v1, v2 = complementary_views(ssl)
    z1, z2 = model.item(v1), model.item(v2)
    ssl_loss = F.cross_entropy(z1 @ z2.t() / tau, torch.arange(z1.shape[0]))
    loss = main + 0.5 * ssl_loss
    loss.backward()
    for o in opts:
        o.step()
    return loss


# ----------------------------------------------------------------------------- din / dien
class Dice(nn.Module):
    def __init__(self, dim, eps=1e-8):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=eps, affine=False, momentum=0.01)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        p = torch.sigmoid(self.bn(x))
        return p * x + (1 - p) * self.alpha * x


class CtrEmbedding(nn.Module):
    def __init__(self, sparse, items=100000, cats=1000, dim=18):
        super().__init__()
        self.item_emb = nn.Embedding(items + 1, dim, padding_idx=0, sparse=sparse)
        self.cat_emb = nn.Embedding(cats + 1, dim, padding_idx=0, sparse=sparse)

    def forward(self, item, cat):
        return torch.cat([self.item_emb(item), self.cat_emb(cat)], -1)


class Din(nn.Module):
    def __init__(self, sparse, dim=18):
        super().__init__()
        e = 2 * dim
        self.emb = CtrEmbedding(sparse, dim=dim)
        self.att = mlp([4 * e, 80, 40, 1], lambda _: nn.Sigmoid())
        self.out = mlp([3 * e, 200, 80, 1], Dice)

    def forward(self, b):
        q = self.emb(b["item"], b["cat"])
        k = self.emb(b["hist_item"], b["hist_cat"])
        qe = q.unsqueeze(1).expand_as(k)
        w = self.att(torch.cat([qe, k, qe - k, qe * k], -1)).squeeze(-1) * b["mask"]
        interest = (w.unsqueeze(-1) * k).sum(1)
        x = torch.cat([interest, q, k.sum(1)], 1)
        return self.out(x).squeeze(-1), None


class AuGruCell(nn.Module):
    """GRU cell whose update gate is scaled by the attention score (DIEN's AUGRU)."""

    def __init__(self, inp, hidden):
        super().__init__()
        self.x2h = nn.Linear(inp, 3 * hidden)
        self.h2h = nn.Linear(hidden, 3 * hidden)

    def forward(self, x, h, a):
        xr, xz, xn = self.x2h(x).chunk(3, 1)
        hr, hz, hn = self.h2h(h).chunk(3, 1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        u = a.unsqueeze(1) * (1 - z)
        return (1 - u) * h + u * n


class Dien(nn.Module):
    def __init__(self, sparse, dim=18, hidden=36):
        super().__init__()
        e = 2 * dim
        self.emb = CtrEmbedding(sparse, dim=dim)
        self.gru = nn.GRU(e, hidden, batch_first=True)
        self.aux = mlp([hidden + e, 100, 50, 1], lambda _: nn.Sigmoid())
        self.W = nn.Linear(e, hidden, bias=False)
        self.augru = AuGruCell(hidden, hidden)
        self.out = mlp([hidden + 2 * e, 200, 80, 1], Dice)

    def forward(self, b):
        q = self.emb(b["item"], b["cat"])
        k = self.emb(b["hist_item"], b["hist_cat"])
        neg = self.emb(b["neg_item"], b["neg_cat"])
        mask, lengths = b["mask"], b["length"]
        packed = nn.utils.rnn.pack_padded_sequence(k, lengths, batch_first=True, enforce_sorted=False)
        h, _ = self.gru(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=k.shape[1])
        # Auxiliary loss: h_t scores the true next behaviour against the negative one.
        hs, m = h[:, :-1], mask[:, 1:].float()
        pos = self.aux(torch.cat([hs, k[:, 1:]], -1)).squeeze(-1)
        ngs = self.aux(torch.cat([hs, neg[:, 1:]], -1)).squeeze(-1)
        bce = F.binary_cross_entropy_with_logits
        aux = ((bce(pos, torch.ones_like(pos), reduction="none")
                + bce(ngs, torch.zeros_like(ngs), reduction="none")) * m).sum() / m.sum()
        scores = (h @ self.W(q).unsqueeze(-1)).squeeze(-1).masked_fill(~mask, float("-inf"))
        att = torch.softmax(scores, 1)
        state = torch.zeros_like(h[:, 0])
        for t in range(h.shape[1]):
            new = self.augru(h[:, t], state, att[:, t])
            state = torch.where(mask[:, t:t + 1], new, state)
        x = torch.cat([state, q, k.sum(1)], 1)
        return self.out(x).squeeze(-1), aux


def ctr_batches(rng, batch, negatives, items=100000, cats=1000, T=50):
    draw, _ = zipf_sampler(items, 1.1, rng)
    out = []
    for _ in range(BATCHES):
        length = integers(rng, 5, T + 1, (batch,))
        mask = torch.arange(T)[None, :] < length[:, None]
        item = 1 + draw(batch)
        hist = torch.where(mask, 1 + draw((batch, T)), 0)
        b = {"item": item, "cat": item % cats + 1, "hist_item": hist,
             "hist_cat": torch.where(mask, hist % cats + 1, 0), "mask": mask, "length": length,
             "label": integers(rng, 0, 2, (batch,)).float()}
        if negatives:
            neg = torch.where(mask, integers(rng, 1, items + 1, (batch, T)), 0)
            b["neg_item"] = neg
            b["neg_cat"] = torch.where(mask, neg % cats + 1, 0)
        out.append(b)
    return out


def ctr_step(model, opts, b):
    for o in opts:
        o.zero_grad()
    logits, aux = model(b)
    loss = F.binary_cross_entropy_with_logits(logits, b["label"])
    if aux is not None:
        loss = loss + aux
    loss.backward()
    for o in opts:
        o.step()
    return loss


# ----------------------------------------------------------------------------- harness
def run(name, sparse, steps):
    torch.manual_seed(1)
    rng = torch.Generator().manual_seed(1)
    if name == "twotower_ssl":
        model, batches, step, examples = TwoTower(sparse), twotower_batches(rng), twotower_step, 1024
    elif name == "din":
        model, batches, step, examples = Din(sparse), ctr_batches(rng, 256, False), ctr_step, 256
    else:
        model, batches, step, examples = Dien(sparse), ctr_batches(rng, 128, True), ctr_step, 128
    opts = make_optimizers(model, sparse)
    for i in range(WARMUP):
        step(model, opts, batches[i % BATCHES])
    times = []
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    for i in range(steps):
        t0 = time.perf_counter()
        loss = step(model, opts, batches[(WARMUP + i) % BATCHES])
        times.append(time.perf_counter() - t0)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_ms = 1000 * (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / steps
    ms = sorted(times)[len(times) // 2] * 1000 if len(times) % 2 else \
        0.5 * sum(sorted(times)[len(times) // 2 - 1:len(times) // 2 + 1]) * 1000
    params = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    return {"workload": name, "examples_per_s": examples / (ms / 1000), "step_ms_median": ms,
            "variant": "sparse+SparseAdam" if sparse else "dense+Adam",
            "cpu_ms_per_step": cpu_ms, "examples_per_cpu_s": examples / (cpu_ms / 1000), "final_loss": float(loss),
            "param_mb": params}


def in_child(fn):
    """Runs fn() in a forked child (before any LibTorch thread exists in this process); returns
    its result and the child's own peak RSS in MiB."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = json.dumps(fn())
        except Exception as e:  # reported, never fatal for the other workloads
            out = json.dumps({"error": repr(e)})
        os.write(w, out.encode())
        os.close(w)
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    _, _, usage = os.wait4(pid, 0)
    result = json.loads(text)
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="twotower_ssl,din,dien")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--variants", default="dense,sparse", help="dense, sparse or both (best reported)")
    args = ap.parse_args()
    for name in args.workloads.split(","):
        def job(v):
            torch.set_num_threads(args.threads)
            return run(name, v == "sparse", args.steps)
        results = [in_child(lambda v=v: job(v)) for v in args.variants.split(",")]
        results = [r for r in results if "error" not in r] or results
        best = max(results, key=lambda r: r.get("examples_per_s", 0))
        best.update({"workload": name, "threads": args.threads, "device": "cpu",
                     "torch": torch.__version__, "implementation": "pytorch-python",
                     "variants": {r.get("variant", "?"): round(r.get("examples_per_s", 0), 1)
                                  for r in results}})
        print(json.dumps(best), flush=True)


if __name__ == "__main__":
    sys.exit(main())
