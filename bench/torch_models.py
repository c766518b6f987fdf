#!/usr/bin/env python3
"""PyTorch eager reference of our three language models, for benchmarks only.

Times full training steps (forward, cross-entropy, backward, gradient clipping,
AdamW) on random tokens, like apps/bench does for our engine, and prints one line
in the same layout:

  torch <model> <preset> B=.. T=.. <dtype> | X ms/step | Y tok/s | peak Z GiB | N.NM params

The models follow docs/models.md and docs/sessa.md in structure and parameter count
(the module names mirror our checkpoint names). Nothing here is tuned: the Sessa
feedback is a dense triangular solve and the Mamba scan a Python loop over time,
i.e. what a plain PyTorch implementation of the papers gives.

PyTorch is never a dependency of the product; this file is only run by the GPU
benchmark driver (bench/run_gpu.sh) to compare against PyTorch eager in one run.

  python3 bench/torch_models.py --model sessa --preset small --batch 16 --seq-len 1024 --dtype bf16
  python3 bench/torch_models.py --model mamba --preset small --check-params
"""

import argparse
import math
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {  # name: (d_model, n_layers, n_heads), as nn/config.cpp
    "tiny": (64, 2, 4),
    "small": (768, 12, 12),
    "medium": (1024, 24, 16),
}


@dataclass
class Config:
    family: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int = 0  # 0: same as n_heads
    gamma_max: float = 0.999
    mamba_expand: int = 2
    mamba_d_state: int = 16
    mamba_d_conv: int = 4

    @property
    def kv_heads(self):
        return self.n_kv_heads if self.n_kv_heads > 0 else self.n_heads


# ----------------------------------------------------------------------------- helpers


def make_linear(d_in, d_out, bias=True, std=0.02):
    """nn.Linear with weight N(0, std) and zero bias (our Linear init)."""
    layer = nn.Linear(d_in, d_out, bias=bias)
    nn.init.normal_(layer.weight, mean=0.0, std=std)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def rope_tables(T, head_dim, device):
    """cos/sin of theta[t, i] = t * 10000^(-2i/dh), shape (T, dh/2), computed in float64."""
    half = head_dim // 2
    t = torch.arange(T, dtype=torch.float64, device=device)
    inv_freq = torch.pow(10000.0, -2.0 * torch.arange(half, dtype=torch.float64, device=device) / head_dim)
    theta = torch.outer(t, inv_freq)
    return torch.cos(theta).float(), torch.sin(theta).float()


def apply_rope(x, cos, sin):
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x: (B, H, T, dh) by theta[t, i]."""
    B, H, T, dh = x.shape
    xp = x.float().reshape(B, H, T, dh // 2, 2)
    x0, x1 = xp[..., 0], xp[..., 1]  # (B, H, T, dh/2); cos, sin (T, dh/2) broadcast
    y = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)  # (B, H, T, dh/2, 2)
    return y.reshape(B, H, T, dh).to(x.dtype)


# ----------------------------------------------------------------------------- attention


class Attention(nn.Module):
    """Causal multi-head attention with RoPE and optional grouped-query heads (nn/attention.cpp)."""

    def __init__(self, d_model, n_heads, n_kv_heads, use_out_proj, out_bias, out_std):
        super().__init__()
        assert d_model % n_heads == 0 and n_heads % n_kv_heads == 0
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        kv = n_kv_heads * self.head_dim
        self.q_proj = make_linear(d_model, d_model)
        self.k_proj = make_linear(d_model, kv)
        self.v_proj = make_linear(d_model, kv)
        self.out_proj = make_linear(d_model, d_model, bias=out_bias, std=out_std) if use_out_proj else None

    def forward(self, x, rope):
        B, T, D = x.shape
        dh = self.head_dim
        q = self.q_proj(x).view(B, T, self.n_heads, dh).transpose(1, 2)  # (B, H, T, dh)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, dh).transpose(1, 2)  # (B, Hkv, T, dh)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, dh).transpose(1, 2)
        cos, sin = rope
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        if self.n_kv_heads < self.n_heads:  # head h reads kv head h // (H / Hkv)
            rep = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale dh^-1/2
        o = o.transpose(1, 2).reshape(B, T, D)
        return self.out_proj(o) if self.out_proj is not None else o


# ----------------------------------------------------------------------------- Sessa


def feedback_solve(q_b, k_b, gamma, f):
    """(S3) and (S5): alpha = strictly causal softmax(q_b k_b^T / sqrt(D)), row 0 zero;
    s = (I - diag(gamma) alpha)^-1 f by a dense unit-lower-triangular solve, in float32.

    q_b, k_b, f: (B, T, D); gamma: (B, T). Returns s: (B, T, D) float32.
    """
    B, T, D = f.shape
    with torch.autocast(device_type="cuda", enabled=False):
        q = q_b.float()
        k = k_b.float()
        logits = torch.matmul(q, k.transpose(1, 2)) * (1.0 / math.sqrt(D))  # (B, T, T)
        allowed = torch.ones(T, T, dtype=torch.bool, device=f.device).tril(-1)  # s < t
        # A large finite fill keeps row 0 (nothing allowed) free of NaN: its softmax is
        # uniform and then zeroed below; in the other rows the filled entries are exp(-1e30) = 0.
        logits = logits.masked_fill(~allowed, -1e30)
        alpha = torch.softmax(logits, dim=-1).masked_fill(~allowed, 0.0)
        eye = torch.eye(T, dtype=torch.float32, device=f.device)
        M = eye - gamma.float().unsqueeze(-1) * alpha  # row t scaled by gamma_t: (B, T, T)
        s = torch.linalg.solve_triangular(M, f.float(), upper=False, unitriangular=True)
    return s


class SessaLayer(nn.Module):
    """The Sessa layer with its own pre-norm and residual (sessa/layer.cpp, docs/sessa.md S1-S6)."""

    def __init__(self, c):
        super().__init__()
        D = c.d_model
        out_std = 0.02 / math.sqrt(2.0 * c.n_layers)
        self.gamma_max = c.gamma_max
        self.norm = nn.LayerNorm(D, eps=1e-5)
        self.proj_in = make_linear(D, 2 * D)
        self.attn = Attention(D, c.n_heads, c.kv_heads, use_out_proj=c.n_heads > 1, out_bias=False, out_std=0.02)
        self.proj_fb = make_linear(D, 2 * D)
        self.gamma_proj = make_linear(D, 1, bias=False)
        self.gamma_bias = nn.Parameter(torch.tensor(1.0))
        self.proj_out = make_linear(D, D, std=out_std)

    def forward(self, x, rope):
        a, g = self.proj_in(self.norm(x)).chunk(2, dim=-1)  # (S1)
        abar = F.gelu(a)  # exact erf GELU
        f = self.attn(abar, rope)  # (S2)
        q_b, k_b = self.proj_fb(abar).chunk(2, dim=-1)  # (S3)
        # (S4), in float32: a 0-dim float32 parameter added to a bf16 tensor would stay bf16.
        gamma = self.gamma_max * torch.tanh(self.gamma_proj(abar).squeeze(-1).float() + self.gamma_bias)  # (B, T)
        s = feedback_solve(q_b, k_b, gamma, f)  # (S5)
        return x + self.proj_out(s.to(g.dtype) * g)  # (S6)


class SessaBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.mixer = SessaLayer(c)

    def forward(self, x, rope):
        return self.mixer(x, rope)


# ----------------------------------------------------------------------------- Transformer


class Mlp(nn.Module):
    def __init__(self, D, out_std):
        super().__init__()
        self.fc_in = make_linear(D, 4 * D)
        self.fc_out = make_linear(4 * D, D, std=out_std)

    def forward(self, x):
        return self.fc_out(F.gelu(self.fc_in(x)))


class TransformerBlock(nn.Module):
    """Pre-LN GPT block (nn/transformer.cpp)."""

    def __init__(self, c):
        super().__init__()
        D = c.d_model
        out_std = 0.02 / math.sqrt(2.0 * c.n_layers)
        self.norm = nn.LayerNorm(D, eps=1e-5)
        self.mixer = Attention(D, c.n_heads, c.kv_heads, use_out_proj=True, out_bias=True, out_std=out_std)
        self.mlp_norm = nn.LayerNorm(D, eps=1e-5)
        self.mlp = Mlp(D, out_std)

    def forward(self, x, rope):
        x = x + self.mixer(self.norm(x), rope)
        return x + self.mlp(self.mlp_norm(x))


# ----------------------------------------------------------------------------- Mamba


def selective_scan(u, delta, A, Bm, Cm, Dskip):
    """Sequential selective scan, a Python loop over time.

    u, delta: (B, T, Di); A: (Di, N); Bm, Cm: (B, T, N); Dskip: (Di,). Returns y: (B, T, Di).
      h_t = exp(delta_t A) * h_{t-1} + (delta_t u_t) B_t;   y_t = sum_n h_t C_t + D u_t
    """
    Bsz, T, Di = u.shape
    N = A.shape[1]
    dA = torch.exp(delta.unsqueeze(-1) * A)  # (B, T, Di, N)
    dBu = (delta * u).unsqueeze(-1) * Bm.unsqueeze(2)  # (B, T, Di, 1) * (B, T, 1, N) -> (B, T, Di, N)
    h = u.new_zeros(Bsz, Di, N)
    ys = []
    for t in range(T):
        h = dA[:, t] * h + dBu[:, t]  # (B, Di, N)
        ys.append((h * Cm[:, t].unsqueeze(1)).sum(-1))  # (B, Di)
    y = torch.stack(ys, dim=1)  # (B, T, Di)
    return y + u * Dskip


class MambaMixer(nn.Module):
    """Gu & Dao 2023 mixer, as nn/mamba.cpp."""

    def __init__(self, c):
        super().__init__()
        D = c.d_model
        Di, N, K, R = c.mamba_expand * D, c.mamba_d_state, c.mamba_d_conv, (D + 15) // 16
        self.d_inner, self.d_state, self.dt_rank = Di, N, R
        self.in_proj = make_linear(D, 2 * Di, bias=False)
        # Depthwise causal conv: weight (Di, 1, K), padded by K-1 on both sides, output cut to [:T].
        self.conv1d = nn.Conv1d(Di, Di, K, groups=Di, padding=K - 1, bias=True)
        bound = 1.0 / math.sqrt(K)
        nn.init.uniform_(self.conv1d.weight, -bound, bound)
        nn.init.zeros_(self.conv1d.bias)
        self.x_proj = make_linear(Di, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, Di, bias=True)
        dt_bound = 1.0 / math.sqrt(R)
        nn.init.uniform_(self.dt_proj.weight, -dt_bound, dt_bound)
        with torch.no_grad():  # softplus(bias) = dt, dt log-uniform in [0.001, 0.1]
            dt = torch.exp(torch.empty(Di, dtype=torch.float64).uniform_(math.log(1e-3), math.log(1e-1)))
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(Di, 1))  # (Di, N)
        self.D = nn.Parameter(torch.ones(Di))
        self.out_proj = make_linear(Di, D, bias=False, std=0.02 / math.sqrt(2.0 * c.n_layers))

    def forward(self, x):
        B, T, _ = x.shape
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, T, Di) each
        u = self.conv1d(xs.transpose(1, 2))[..., :T]  # (B, Di, T)
        u = F.silu(u.transpose(1, 2))  # (B, T, Di)
        dt_low, Bm, Cm = torch.split(self.x_proj(u), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt_low))  # (B, T, Di)
        A = -torch.exp(self.A_log.float())  # (Di, N)
        # The scan runs in float32 whatever the autocast dtype (elementwise ops only).
        y = selective_scan(u.float(), delta.float(), A, Bm.float(), Cm.float(), self.D.float())
        return self.out_proj(y.to(z.dtype) * F.silu(z))


class MambaBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c.d_model, eps=1e-5)
        self.mixer = MambaMixer(c)

    def forward(self, x, rope):
        return x + self.mixer(self.norm(x))


# ----------------------------------------------------------------------------- language model


class LanguageModel(nn.Module):
    """Embedding -> blocks -> LayerNorm -> tied head (nn/lm.cpp)."""

    def __init__(self, c):
        super().__init__()
        self.config = c
        block = {"sessa": SessaBlock, "transformer": TransformerBlock, "mamba": MambaBlock}[c.family]
        self.embedding = nn.Embedding(c.vocab_size, c.d_model)
        nn.init.normal_(self.embedding.weight, mean=0.0, std=0.02)
        self.layers = nn.ModuleList([block(c) for _ in range(c.n_layers)])
        self.norm_f = nn.LayerNorm(c.d_model, eps=1e-5)

    def forward(self, ids):
        c = self.config
        rope = None
        if c.family != "mamba":
            rope = rope_tables(ids.shape[1], c.d_model // c.n_heads, ids.device)
        h = self.embedding(ids)
        for layer in self.layers:
            h = layer(h, rope)
        return F.linear(self.norm_f(h), self.embedding.weight)  # (B, T, V)


def build_model(c):
    torch.manual_seed(1)
    return LanguageModel(c)


def make_optimizer(model):
    """AdamW as nn/optim.h: weight decay only on Linear and conv weights."""
    decay_ids = set()
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            decay_ids.add(id(m.weight))
    decay = [p for p in model.parameters() if id(p) in decay_ids]
    no_decay = [p for p in model.parameters() if id(p) not in decay_ids]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)


# ----------------------------------------------------------------------------- benchmark


def config_from_args(args):
    d_model, n_layers, n_heads = PRESETS[args.preset]
    if args.layers > 0:
        n_layers = args.layers
    return Config(family=args.model, vocab_size=args.vocab, d_model=d_model, n_layers=n_layers,
                  n_heads=n_heads, n_kv_heads=args.kv_heads)


def run(args, c, label):
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (and the fp32 parts under bf16) on TF32
    torch.backends.cudnn.allow_tf32 = True
    model = build_model(c).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = make_optimizer(model)
    forward = torch.compile(model) if args.compile else model  # default mode; compiled during warm-up

    B, T, V = args.batch, args.seq_len, c.vocab_size
    gen = torch.Generator(device=device)
    gen.manual_seed(7)
    tokens = torch.randint(0, V, (B, T + 1), device=device, generator=gen)
    ids, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    use_bf16 = args.dtype == "bf16"

    def train_step():
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_bf16):
            logits = forward(ids)
            loss = F.cross_entropy(logits.view(B * T, V), targets.view(B * T))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    times = []
    warned = False
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        loss = train_step()
        end.record()
        end.synchronize()
        if i >= args.warmup:
            times.append(start.elapsed_time(end))
        if not math.isfinite(loss) and not warned:
            print(f"torch_models: warning: non-finite loss {loss} at step {i} ({label})", file=sys.stderr)
            warned = True

    times.sort()
    median = times[len(times) // 2]  # as apps/bench
    tok_s = B * T / (median / 1e3)
    peak_gib = torch.cuda.max_memory_allocated(device) / float(1 << 30)
    print(f"{label} | {median:9.2f} ms/step | {tok_s:9.0f} tok/s | peak {peak_gib:6.2f} GiB | "
          f"{n_params / 1e6:.1f}M params", flush=True)


def main():
    p = argparse.ArgumentParser(description="PyTorch eager training-step benchmark of the Sessa, "
                                            "Transformer and Mamba language models (benchmarks only).")
    p.add_argument("--model", choices=["sessa", "transformer", "mamba"], default="sessa")
    p.add_argument("--preset", choices=list(PRESETS), default="small")
    p.add_argument("--layers", type=int, default=0, help="override the number of layers (0: the preset's)")
    p.add_argument("--kv-heads", type=int, default=0, help="grouped-query kv heads (0: as many as heads)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (default mode); compilation happens in the warm-up steps")
    p.add_argument("--check-params", type=int, metavar="EXPECTED", default=None,
                   help="print the parameter count and exit (no GPU); fail unless it equals EXPECTED, the "
                        "engine's exact count: build/apps/bench --count-params with the same --model/--preset/--layers")
    args = p.parse_args()
    if args.compile:
        args.warmup = max(args.warmup, 3)  # the first compiled steps compile (and may recompile once)
    if args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.seq_len < 1:
        p.error("--steps, --batch and --seq-len must be positive and --warmup non-negative")

    c = config_from_args(args)
    if args.check_params is not None:
        n = sum(q.numel() for q in build_model(c).parameters())
        print(n)
        if n != args.check_params:
            print(f"torch_models: parameter count {n} differs from the engine's {args.check_params}", file=sys.stderr)
            return 1
        return 0

    kind = "compiled" if args.compile else "torch"
    label = f"{kind} {args.model:<11s} {args.preset:<6s} B={args.batch:<3d} T={args.seq_len:<5d} {args.dtype:<5s}"
    if not torch.cuda.is_available():
        print(f"{label} | no CUDA device", flush=True)
        return 1
    try:
        run(args, c, label)
    except torch.cuda.OutOfMemoryError:
        print(f"{label} | OOM", flush=True)
    except RuntimeError as e:  # allocation failures reported outside the caching allocator
        if "out of memory" not in str(e).lower():
            raise
        print(f"{label} | OOM", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
