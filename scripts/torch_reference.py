#!/usr/bin/env python3
"""PyTorch reference for `distill-sim bench` (torch only; used by the benchmark, nowhere else).

The same transformer (src/model/spec.rs: no learned positions, rotary position embeddings on
queries and keys, the voice projection added once at position 0), the same training step
(weighted soft-target cross-entropy; AdamW with betas 0.9/0.98, epsilon 1e-5, decoupled weight
decay 0.01 on matrices only, per-tensor gradient-norm clipping at 1.0) and the same batched generation (left padding, KV cache,
greedy, top-5 logprobs, PAD fed to finished rows, stop when every row has emitted EOS or
reached max_new), on the weights and workload that `distill-sim bench --dump DIR` wrote. The
timing protocol is the Rust benchmark's: one warm-up generation of 64 prompts, then 3 x 512
prompts in batches of 256; one warm-up training step, then 16 steps cycling the batches.

Written as idiomatic eager PyTorch: parameters as separate tensors, torch.optim.AdamW (fused on
CUDA, foreach on the CPU), foreach ops for the clipping, F.scaled_dot_product_attention.
`--compile` adds a torch.compile row for the training step where it works.

    python scripts/torch_reference.py --dir DUMP --device cuda [--compile] [--quick]

`--parity DIR` is the other use, by the engine parity test (tests/engine_parity.rs): on the
weights and batches the test wrote to DIR, compute logits, losses and every gradient (hard,
top-k soft and tempered targets), five AdamW steps and greedy generations in float32 on the CPU,
and write them to DIR/torch.safetensors for the test to compare with each engine.
"""

import argparse
import json
import struct
import sys
import time

import torch
import torch.nn.functional as F

PAD, EOS = 0, 3
MASKED = -1e9
ROPE_BASE = 10000.0


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        assert meta["dtype"] == "F32", (name, meta["dtype"])
        s, e = meta["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[s:e]), dtype=torch.float32).reshape(meta["shape"])
    return out


def rope_tables(pos, half):
    """Rotary cosines and sines of pos (B, T) for a head of width 2 * half: each (B, 1, T, half),
    angles pos * ROPE_BASE^(-i / half), computed in float64 as src/model/engine.rs rope_tables."""
    inv = ROPE_BASE ** (-torch.arange(half, dtype=torch.float64, device=pos.device) / half)
    ang = pos.to(torch.float64).unsqueeze(-1) * inv  # (B, T, half)
    return ang.cos().float().unsqueeze(1), ang.sin().float().unsqueeze(1)


def rotate(x, cos, sin):
    """Rotate-half rotary embedding of x (B, H, T, hs)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


class Model:
    """Parameters in the canonical names and layouts of src/model/weights.rs (y = x W + b)."""

    def __init__(self, spec, weights, device):
        self.spec = spec
        self.names = list(weights.keys())
        self.p = {k: v.to(device).requires_grad_(True) for k, v in weights.items()}

    def params(self):
        return [self.p[k] for k in self.names]

    def forward(self, tokens, pos, voice, mask=None, cache=None):
        s, p = self.spec, self.p
        b, t = tokens.shape
        d, h = s["d_model"], s["heads"]
        hs = d // h
        cos, sin = rope_tables(pos, hs // 2)
        # The voice enters once, at position 0 (BOS).
        gate = (pos == 0).to(voice.dtype).unsqueeze(-1)  # (B, T, 1)
        x = F.embedding(tokens, p["tok_emb.weight"])
        x = x + (voice @ p["voice_proj.weight"]).view(b, 1, d) * gate
        for l in range(s["layers"]):
            n = lambda k: p[f"blocks.{l}.{k}"]
            a = F.layer_norm(x, (d,), n("ln1.weight"), n("ln1.bias"), 1e-5)
            qkv = a @ n("attn.qkv.weight") + n("attn.qkv.bias")
            q, k, v = qkv.view(b, t, 3 * h, hs).transpose(1, 2).chunk(3, dim=1)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            if cache is not None:
                if len(cache) > l:
                    k = torch.cat([cache[l][0], k], 2)
                    v = torch.cat([cache[l][1], v], 2)
                    cache[l] = (k, v)
                else:
                    cache.append((k, v))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
            y = y.transpose(1, 2).reshape(b, t, d)
            x = x + y @ n("attn.proj.weight") + n("attn.proj.bias")
            m = F.layer_norm(x, (d,), n("ln2.weight"), n("ln2.bias"), 1e-5)
            m = F.gelu(m @ n("mlp.fc.weight") + n("mlp.fc.bias"))
            x = x + m @ n("mlp.out.weight") + n("mlp.out.bias")
        x = F.layer_norm(x, (d,), p["ln_f.weight"], p["ln_f.bias"], 1e-5)
        return x @ p["head.weight"] + p["head.bias"]


def loss_fn(model, tokens, voice, probs, weight):
    b, t = tokens.shape
    pos = torch.arange(t, device=tokens.device).expand(b, t)
    logits = model.forward(tokens, pos, voice)
    ce = (F.log_softmax(logits, -1) * probs).sum(-1)
    return (ce * weight).sum() / -weight.sum().clamp_min(1e-6)


def tempered_loss_fn(model, tokens, voice, probs, weight, sprobs, inv_t, mask, rest, rest_eps):
    """The loss with a tempered term (src/model/engine.rs, SoftTargets): per position
    -sum p log_softmax(z) - sum s log_softmax(z / T) - rest log(sum mask softmax(z / T) + eps),
    weighted, over the total weight."""
    b, t = tokens.shape
    pos = torch.arange(t, device=tokens.device).expand(b, t)
    z = model.forward(tokens, pos, voice)
    ce = (F.log_softmax(z, -1) * probs).sum(-1)
    lt = F.log_softmax(z * inv_t, -1)
    ce = ce + (lt * sprobs).sum(-1)
    ce = ce + rest * torch.log((mask * lt.exp()).sum(-1) + rest_eps)
    return (ce * weight).sum() / -weight.sum().clamp_min(1e-6)


def train_setup(model, device, lr=1e-3):
    params = model.params()
    kw = {"fused": True} if device.type == "cuda" else {"foreach": True}
    # Decoupled weight decay on matrices (embeddings, voice projection included) only.
    groups = [
        {"params": [q for q in params if q.dim() == 2], "weight_decay": 0.01},
        {"params": [q for q in params if q.dim() != 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-5, **kw)
    return params, opt


def train_step(model, params, opt, batch, lossf):
    loss = lossf(model, *batch)
    loss.backward()
    grads = [q.grad for q in params]
    # Per-tensor clipping (burn's GradientClippingConfig::Norm): g * min(1, 1 / (|g| + tiny)).
    norms = torch._foreach_norm(grads)
    coefs = [torch.clamp(1.0 / (n + torch.finfo(torch.float32).tiny), max=1.0) for n in norms]
    torch._foreach_mul_(grads, coefs)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


@torch.no_grad()
def generate(model, prompts, voice, max_new, top_k, device):
    """prompts: list of token lists (BOS .. SEP). Returns the generated token lists."""
    b = len(prompts)
    p = max(len(x) for x in prompts)
    pads = [p - len(x) for x in prompts]
    toks = torch.zeros(b, p, dtype=torch.long)
    pos = torch.zeros(b, p, dtype=torch.long)
    for r, x in enumerate(prompts):
        toks[r, pads[r]:] = torch.tensor(x)
        pos[r, pads[r]:] = torch.arange(len(x))
    i = torch.arange(p)
    causal = i.view(1, p, 1) < i.view(1, 1, p)  # j > i
    padm = i.view(1, 1, p) < torch.tensor(pads).view(b, 1, 1)
    mask = torch.zeros(b, 1, p, p).masked_fill((causal | padm).unsqueeze(1), MASKED)
    keys = torch.zeros(b, 1, 1, p + max_new)
    keys[:, :, :, :p].masked_fill_(padm.view(b, 1, 1, p), MASKED)
    toks, pos, mask, keys = toks.to(device), pos.to(device), mask.to(device), keys.to(device)
    cache = []
    logits = model.forward(toks, pos, voice, mask, cache)[:, -1]
    out = [[] for _ in range(b)]
    done = [False] * b
    base = torch.tensor([p - x for x in pads], device=device)
    for step in range(max_new):
        lp = F.log_softmax(logits, -1)
        top = torch.topk(lp, top_k, dim=-1)
        nxt = top.indices[:, 0].tolist()  # greedy: the argmax; host sync, as the Rust decoder
        _ = top.values.cpu()
        for r in range(b):
            if done[r]:
                nxt[r] = PAD
                continue
            out[r].append(nxt[r])
            if nxt[r] == EOS or len(out[r]) >= max_new:
                done[r] = True
        if all(done) or step + 1 == max_new:
            break
        s = p + step + 1
        logits = model.forward(
            torch.tensor(nxt, device=device).view(b, 1),
            (base + step).view(b, 1),
            voice,
            keys[:, :, :, :s],
            cache,
        )[:, -1]
    return out


def gen_all(model, prompts, voice, cfg, device):
    max_new, batch, top_k = cfg
    out = []
    for c in range(0, len(prompts), batch):
        chunk = prompts[c:c + batch]
        longest = max(len(x) for x in chunk)
        n = min(max_new, model.spec["context"] - longest)
        out += generate(model, chunk, voice[c:c + batch], n, top_k, device)
    return out


def bench_size(size, args, work, device):
    spec = json.load(open(f"{args.dir}/{size}.json"))
    model = Model(spec, load_safetensors(f"{args.dir}/{size}.safetensors"), device)
    prompts = [[int(t) for t in row if t >= 0] for row in work["gen.prompts"].tolist()]
    voice = work["gen.voice"].to(device)
    cfg = [int(x) for x in work["gen.config"].tolist()]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen_all(model, prompts[:64], voice[:64], (cfg[0], 64, cfg[2]), device)
    reps = 1 if args.quick else 3
    t0 = time.perf_counter()
    for _ in range(reps):
        g = gen_all(model, prompts, voice, cfg, device)
    sync()
    qps = reps * len(prompts) / (time.perf_counter() - t0)
    generated = sum(len(x) for x in g)
    nb = len([k for k in work if k.startswith("train.") and k.endswith(".tokens")])
    batches = [
        tuple(work[f"train.{i}.{k}"].to(device) for k in ("tokens", "voice", "probs", "weight"))
        for i in range(nb)
    ]
    batches = [(t.long(), v, p, w) for t, v, p, w in batches]
    rows = [("eager", qps, generated, train_tps(model, batches, args, device, loss_fn))]
    if args.compile:
        model = Model(spec, load_safetensors(f"{args.dir}/{size}.safetensors"), device)
        try:
            compiled = torch.compile(loss_fn, dynamic=True)
            rows.append(("compile", None, None, train_tps(model, batches, args, device, compiled)))
        except Exception as e:  # report, do not hide
            print(f"[reference] torch.compile failed for {size}: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
    for mode, q, n, tps in rows:
        qs = f"{q:.0f}" if q is not None else "-"
        ns = f"{n}" if n is not None else "-"
        print(f"| torch-{mode}-{device.type} | {size} | {sum(x.numel() for x in model.params())} | {qs} | {ns} | {tps:.0f} |", flush=True)


def train_tps(model, batches, args, device, lossf):
    params, opt = train_setup(model, device)
    train_step(model, params, opt, batches[0], lossf)
    steps = 4 if args.quick else 16
    tokens = 0
    t0 = time.perf_counter()
    for i in range(steps):
        b = batches[i % len(batches)]
        tokens += b[0].numel()
        train_step(model, params, opt, b, lossf)
    return tokens / (time.perf_counter() - t0)


def save_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, x in tensors.items():
        b = x.detach().cpu().float().contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(x.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def parity(d):
    """The parity test's reference values (see the module docstring), float32 on the CPU."""
    torch.manual_seed(0)
    spec = json.load(open(f"{d}/spec.json"))
    weights = load_safetensors(f"{d}/w.safetensors")
    x = load_safetensors(f"{d}/parity.safetensors")
    cpu = torch.device("cpu")
    out = {}
    # Each use gets its own copy: on the CPU `.to(cpu)` is no copy, and the AdamW steps below
    # update their parameters in place.
    fresh = lambda: {k: v.clone() for k, v in weights.items()}
    model = Model(spec, fresh(), cpu)
    b, t = x["hard.tokens"].shape
    pos = torch.arange(t).expand(b, t)
    with torch.no_grad():
        out["logits"] = model.forward(x["hard.tokens"].long(), pos, x["hard.voice"])
    for kind in ("hard", "topk", "temp"):
        args = [x[f"{kind}.{k}"] for k in ("tokens", "voice", "probs", "weight")]
        args[0] = args[0].long()
        if kind == "temp":
            extra = [x["temp.sprobs"], float(x["temp.inv_t"][0]), x["temp.rest_mask"], x["temp.rest"], float(x["rest_eps"][0])]
            loss = tempered_loss_fn(model, *args, *extra)
        else:
            loss = loss_fn(model, *args)
        grads = torch.autograd.grad(loss, model.params())
        out[f"{kind}.loss"] = loss.detach().reshape(1)
        for name, g in zip(model.names, grads):
            out[f"{kind}.grad.{name}"] = g
    # Five AdamW steps from the same weights, fresh optimiser, learning rate as given.
    model = Model(spec, fresh(), cpu)
    params, opt = train_setup(model, cpu, lr=float(x["steps.lr"][0]))
    losses = []
    for i in range(5):
        batch = [x[f"steps.{i}.{k}"] for k in ("tokens", "voice", "probs", "weight")]
        batch[0] = batch[0].long()
        losses.append(train_step(model, params, opt, batch, loss_fn))
    out["steps.loss"] = torch.tensor(losses)
    for name in model.names:
        out[f"steps.w.{name}"] = model.p[name]
    # Greedy generations, right-padded with -1.
    model = Model(spec, fresh(), cpu)
    prompts = [[int(v) for v in row if v >= 0] for row in x["gen.prompts"].tolist()]
    max_new, batch, top_k = [int(v) for v in x["gen.config"].tolist()]
    gens = gen_all(model, prompts, x["gen.voice"], (max_new, batch, top_k), cpu)
    g = torch.full((len(gens), max_new), -1.0)
    for r, row in enumerate(gens):
        g[r, :len(row)] = torch.tensor(row, dtype=torch.float32)
    out["gen.tokens"] = g
    save_safetensors(f"{d}/torch.safetensors", out)
    print(f"PyTorch {torch.__version__}: reference values in {d}/torch.safetensors")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parity", help="write the parity test's reference values for this folder")
    ap.add_argument("--dir", help="the folder `distill-sim bench --dump` wrote")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes", default="student-s,teacher-s,teacher-m")
    ap.add_argument("--compile", action="store_true", help="add a torch.compile training row")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args = ap.parse_args()
    if args.parity:
        parity(args.parity)
        return
    if not args.dir:
        ap.error("--dir is required (or --parity)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch.cuda.is_available() is False")
    work = load_safetensors(f"{args.dir}/workload.safetensors")
    print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}, {torch.get_num_threads()} CPU threads")
    print()
    print("| engine | model | params | generation (queries/s) | tokens generated | training (tokens/s) |")
    print("|---|---|---:|---:|---:|---:|")
    for size in args.sizes.split(","):
        bench_size(size, args, work, device)


if __name__ == "__main__":
    main()
