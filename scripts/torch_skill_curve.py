"""Train scripts/torch_reference.py's model on the batches examples/skill_curve.rs dumped (DUMP=DIR),
from the same initial weights, and print the online answer accuracy per window (argmax at the
first answer position of each batch, before training on it). A diagnostic of issue 24: does
PyTorch learn what the fused engine does not, on the same data?

    DUMP=/tmp/d cargo run --release --example skill_curve -- teacher-s lookup 0 4000 2e-3 1 1000
    .torch-venv/bin/python scripts/torch_skill_curve.py /tmp/d ref 2e-3 250 [same|pt|x<f>] [answer|all]

VARIANT: ref (the engines' optimiser: AdamW 0.9/0.98, eps 1e-5, per-tensor clip 1.0) or std
(AdamW 0.9/0.999, eps 1e-8, global-norm clip 1.0). INIT: same (the dumped weights), pt (PyTorch
defaults: N(0, 1) embeddings, U(+-1/sqrt(fan_in)) matrices) or x<f> (matrices scaled by f).
LOSS: answer (the engines' targets) or all (next-token loss on every token)."""
import json, sys, time, torch
sys.path.insert(0, __import__("os").path.dirname(__file__))
import torch_reference as R
import torch.nn.functional as F
d, variant, lr, every = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
spec = {"d_model": 96, "heads": 4, "layers": 3}
m = R.Model(spec, R.load_safetensors(f"{d}/init.safetensors"), torch.device("cpu"))
init = sys.argv[5] if len(sys.argv) > 5 else "same"
lossmode = sys.argv[6] if len(sys.argv) > 6 else "answer"
if init == "pt":
    # PyTorch defaults: nn.Embedding N(0, 1); nn.Linear U(+-1/sqrt(fan_in)) weights and biases.
    torch.manual_seed(0)
    with torch.no_grad():
        for k, v in m.p.items():
            if k == "tok_emb.weight":
                v.normal_(0, 1)
            elif k.endswith(".weight") and v.dim() == 2:
                b = 1 / v.shape[0] ** 0.5
                v.uniform_(-b, b)
            elif k.endswith(".bias") and "ln" not in k:
                pass
elif init.startswith("x"):
    f = float(init[1:])
    with torch.no_grad():
        for k, v in m.p.items():
            if v.dim() == 2:
                v.mul_(f)
params = m.params()
groups = [{"params": [q for q in params if q.dim() == 2], "weight_decay": 0.01},
          {"params": [q for q in params if q.dim() != 2], "weight_decay": 0.0}]
if variant == "ref":
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-5)
else:
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
V = m.p["head.weight"].shape[1]
ok = tot = 0; lsum = 0.0; t0 = time.time()
for step, line in enumerate(open(f"{d}/batches.jsonl")):
    rows = json.loads(line)
    T = max(len(r["tokens"]) for r in rows); B = len(rows)
    tok = torch.zeros(B, T, dtype=torch.long); w = torch.zeros(B, T); tgt = torch.zeros(B, T, dtype=torch.long)
    voice = torch.tensor([r["voice"] for r in rows])
    for i, r in enumerate(rows):
        tok[i, :len(r["tokens"])] = torch.tensor(r["tokens"])
        for j, t in enumerate(r["targets"]):
            if r["sep"] + j < T:
                w[i, r["sep"] + j] = 1; tgt[i, r["sep"] + j] = t
    probs = F.one_hot(tgt, V).float()
    cur = min(step + 1, 100) / 100 * lr
    for g in opt.param_groups: g["lr"] = cur
    pos = torch.arange(T).expand(B, T)
    logits = m.forward(tok, pos, voice)
    # answer accuracy: the first answer token only (the digit), before the step
    first = torch.zeros(B, dtype=torch.long)
    for i, r in enumerate(rows): first[i] = r["sep"]
    pred = logits[torch.arange(B), first].argmax(-1)
    ok += (pred == tgt[torch.arange(B), first]).sum().item(); tot += B
    ce = (F.log_softmax(logits, -1) * probs).sum(-1)
    if lossmode == "all":
        # language modelling on every next token (the prompt too), PAD excluded
        nxt = torch.zeros(B, T, dtype=torch.long); wa = torch.zeros(B, T)
        for i, r in enumerate(rows):
            n = len(r["tokens"])
            nxt[i, :n - 1] = torch.tensor(r["tokens"][1:]); wa[i, :n - 1] = 1
        ce = F.log_softmax(logits, -1).gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
        loss = (ce * wa).sum() / -wa.sum()
    else:
        loss = (ce * w).sum() / -w.sum()
    loss.backward()
    grads = [q.grad for q in params]
    if variant == "ref":
        norms = torch._foreach_norm(grads)
        torch._foreach_mul_(grads, [torch.clamp(1.0 / (n + 1e-38), max=1.0) for n in norms])
    else:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step(); opt.zero_grad(set_to_none=True)
    lsum += loss.item()
    if (step + 1) % every == 0:
        print(f"step {step+1} {time.time()-t0:.0f}s loss {lsum/every:.4f} first-token acc {ok/tot:.3f}", flush=True)
        ok = tot = 0; lsum = 0.0
