#!/usr/bin/env python3
"""torch_reference.py - the course's workload in PyTorch: to time beside the C programs, and
(with --same-init) to prove that they compute what PyTorch computes.

The original app's model, Linear(1,H) -> ReLU -> Linear(H,H) -> LayerNorm(H) -> ReLU ->
Linear(H,1), on y = sin(x) + N(0, 0.1^2) with x uniform in [-pi, pi], 80% train / 20%
eval, Adam (or SGD with momentum 0.9) on the MSE loss, batches from a DistributedSampler.
With --ranks N > 1 it runs DistributedDataParallel over N processes with gloo on the CPU
(or NCCL on GPUs with --device cuda). Each rank uses --threads CPU threads (default 1, as
each C rank does).

    python3 tools/torch_reference.py [--ranks N] [--epochs E] [--batch-size B] ...

Prints the epoch lines as the C programs do, then one machine-readable line:
    RESULT impl=torch ranks=N device=cpu seconds_per_epoch=X final_eval_loss=Y
seconds_per_epoch times the training loop only (after process start and set-up).

--same-init: the C programs' numbers, trained by PyTorch
--------------------------------------------------------
Without the flag the data, weights and shuffle come from torch's own generators, which is
right for timing but cannot be compared number for number. With it, this script re-derives
from their specification everything the C programs start from, and lets PyTorch's own
modules, autograd, loss and optimizers (nn.Linear, nn.LayerNorm, nn.MSELoss,
torch.optim.Adam / SGD, all float32) do the training:

  - the random numbers: splitmix64 used as a hash of (seed, stream, counter) (common/rng.c);
  - the data (common/data.c): x = -pi + 2 pi u and y = sin(x) + 0.1 * normal in double,
    each rounded to float32 once; the first int(0.8 n) samples train;
  - the initial weights (common/mlp.c, mlp_init_params): parameter i of the C layout
    (w1, b1, w2, b2, ln_gamma, ln_beta, w3, b3) is u * bound in float32, where
    u = (float)uniform * 2.0f - 1.0f and bound = 1.0f (w1, b1) or 1.0f / sqrtf(H); LayerNorm
    starts at 1 and 0;
  - the sampler (common/data.c, sampler_set_epoch): a Fisher-Yates shuffle whose swap at i
    takes j = hash(seed, epoch << 32 | i) mod (i + 1), padded to a multiple of N by
    repeating the first indices; rank r takes positions r, r + N, ...; batches are
    consecutive runs of --batch-size of those (the last one may be short);
  - the losses (lessons 01, 02 and 04): the train loss is the mean over the batches (with
    --accumulate, the micro-batches) of each one's MSE, averaged over the ranks; the eval loss is the sum of the squared errors
    of every eval sample divided by their number, rank r scoring the eval samples
    r, r + N, ... (lesson 02's split; one rank scores them all).

With --ranks N > 1 the N ranks are real DistributedDataParallel processes over gloo, each
fed its shard by the C sampler: what lesson 02 (and 03) claim to do is compared with the
thing itself (DDP's broadcast, gradient buckets and averaging), not with a simulation of
it. N replicas in one process with averaged gradients would compute the same, but they
would prove less, and they would not be cheaper by much: the ranks are forked from this
process, which has imported torch already (and run no torch computation, so no thread
pool is copied half-alive), so an added rank costs well under a second (5 epochs at the
defaults on 2 cores: about 2 s with 1 rank, 2.5 s with 3).

The constants. torch.optim.Adam is handed Python floats and computes 1 - beta1, 1 - beta2
and the bias corrections 1 - beta**step in double; the C code keeps its constants in
float32 (0.9f, 0.999f, 1e-8f, the learning rate) and computes in float32. 0.999f is
0.99900001287..., so C's 1.0f - 0.999f = 0.00099998713 is 1.3e-5 relative below the 0.001
that torch gets from betas=(0.9, 0.999), and so is Adam's second moment (its bias
correction, made from the same constant, divides most of that out again). So
--same-init hands torch the float32 values of the constants (betas, eps,
learning rate, SGD's momentum), as C has them; 1 - float32(beta) is then exact in double
and in float, and both sides use the same numbers. What is left is rounding in the last
bits (float32 sums in another order, powf against **), about 1e-6 relative in the losses.
--python-constants hands torch the plain Python values instead, to see the difference
(about 4e-6 over 5 epochs at the defaults).

How long the agreement lasts. Adam divides by the square root of its second moments, and
some are tiny (a unit that rarely fires gets gradients made of rounding), so a last-bit
difference can become a different step: at the defaults the losses agree to ~1e-6 for
about 15 epochs, then drift apart (to ~1e-2 by epoch 20) at the same level - as two C
builds (-O0 and -O3 -march=native) do too. Compare the first epochs.

One more detail: the C build may fuse x = -pi + 2 pi u into one fused multiply-add
(-ffp-contract=fast), which can change the last bit of a double; after the rounding to
float32 that changes a sample with a probability of about 1e-9.

--out DIR writes DIR/losses.csv as the C programs do; --dump-params FILE writes the final
parameters as raw little-endian float32 in the C layout (w1, b1, w2, b2, ln_gamma,
ln_beta, w3, b3), which tests/test_torch.c compares with a C checkpoint.
"""
import argparse
import contextlib
import math
import os
import socket
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


def make_model(hidden):
    return nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, 1))


def make_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 2 * math.pi - math.pi
    y = torch.sin(x) + 0.1 * torch.randn(n, 1, generator=g)
    n_train = int(0.8 * n)
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


# ----------------------------------------------------------------------------
# the C programs' random numbers, data, weights and sampler (--same-init)

MASK64 = (1 << 64) - 1
# common/rng.h's streams
RNG_STREAM_DATA_X, RNG_STREAM_DATA_NOISE, RNG_STREAM_INIT, RNG_STREAM_SHUFFLE = 1, 2, 3, 4


def splitmix64(z):
    """splitmix64's finaliser on numpy uint64 arrays (wrapping arithmetic, as in C)."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def rng_u64(seed, stream, counters):
    """rng_u64(seed, stream, c) for every c of counters: a pure function, no state."""
    with np.errstate(over="ignore"):
        key = splitmix64(np.uint64(seed & MASK64) ^ splitmix64(np.array([stream], np.uint64)))
        return splitmix64(key ^ splitmix64(np.asarray(counters, dtype=np.uint64)))


def rng_uniform(seed, stream, counters):
    """Uniform in [0, 1) from the top 53 bits, in double (exact)."""
    return (rng_u64(seed, stream, counters) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def c_dataset(n_total, seed):
    """data.c's samples: x and y computed in double, each rounded to float32 once."""
    counters = np.arange(n_total, dtype=np.uint64)
    u_x = rng_uniform(seed, RNG_STREAM_DATA_X, counters)
    # rng_normal draws its two uniforms at counters 2i and 2i + 1
    u1 = 1.0 - rng_uniform(seed, RNG_STREAM_DATA_NOISE, 2 * counters)
    u2 = rng_uniform(seed, RNG_STREAM_DATA_NOISE, 2 * counters + np.uint64(1))
    x = np.empty(n_total, np.float32)
    y = np.empty(n_total, np.float32)
    for i in range(n_total):
        # math's sin, log and cos are the C library's, as data.c's are (numpy has its own)
        xi = -math.pi + 2.0 * math.pi * float(u_x[i])
        normal = math.sqrt(-2.0 * math.log(float(u1[i]))) * math.cos(2.0 * math.pi * float(u2[i]))
        x[i] = xi
        y[i] = math.sin(xi) + 0.1 * normal
    return x, y, int(0.8 * n_total)


def c_init_params(hidden, seed):
    """mlp_init_params: the C layout w1, b1, w2, b2, ln_gamma, ln_beta, w3, b3 as float32."""
    H = hidden
    sizes = [H, H, H * H, H, H, H, H, 1]
    n = sum(sizes)
    f32 = np.float32
    # (float)u * 2.0f - 1.0f, every operation in float32
    u = rng_uniform(seed, RNG_STREAM_INIT, np.arange(n, dtype=np.uint64)).astype(f32)
    u = u * f32(2.0) - f32(1.0)
    bound_in1, bound_inH = f32(1.0), f32(1.0) / np.sqrt(f32(H))
    ends = np.cumsum(sizes)  # where w1, b1, w2, ... end
    params = np.empty(n, f32)
    params[: ends[1]] = u[: ends[1]] * bound_in1  # w1, b1: fan_in 1
    params[ends[1] : ends[3]] = u[ends[1] : ends[3]] * bound_inH  # w2, b2: fan_in H
    params[ends[3] : ends[4]] = 1.0  # ln_gamma
    params[ends[4] : ends[5]] = 0.0  # ln_beta
    params[ends[5] :] = u[ends[5] :] * bound_inH  # w3, b3: fan_in H
    return params


def c_sampler_indices(n, world_size, rank, seed, epoch):
    """sampler_set_epoch: this rank's training indices for epoch, in order."""
    i = np.arange(n - 1, 0, -1, dtype=np.int64)  # the swaps go from the top down
    counters = (np.uint64(epoch) << np.uint64(32)) | i.astype(np.uint64)  # epoch << 32 | i
    draws = rng_u64(seed, RNG_STREAM_SHUFFLE, counters)
    swaps = (draws % (i + 1).astype(np.uint64)).astype(np.int64)
    permutation = list(range(n))
    for top, j in zip(i.tolist(), swaps.tolist()):
        permutation[top], permutation[j] = permutation[j], permutation[top]
    num_samples = (n + world_size - 1) // world_size
    return np.array([permutation[(rank + k * world_size) % n] for k in range(num_samples)])


def model_tensors(model):
    """The model's parameters in the C layout's order (w1, b1, w2, b2, gamma, beta, w3, b3)."""
    layers = [model[0], model[2], model[3], model[5]]
    return [t for layer in layers for t in (layer.weight, layer.bias)]


def set_params(model, flat):
    with torch.no_grad():
        offset = 0
        for t in model_tensors(model):
            t.copy_(torch.from_numpy(flat[offset : offset + t.numel()]).view_as(t))
            offset += t.numel()
        assert offset == flat.size


def get_params(model):
    return np.concatenate([t.detach().cpu().numpy().reshape(-1) for t in model_tensors(model)])


def write_losses(out_dir, losses):
    """DIR/losses.csv as common/report.c writes it (epoch,train_loss,eval_loss,seconds)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "losses.csv"), "w") as f:
        f.write("epoch,train_loss,eval_loss,seconds\n")
        for e, (train, evaluation, seconds) in enumerate(losses):
            f.write(f"{e + 1},{train:.9g},{evaluation:.9g},{seconds:.6f}\n")


# ----------------------------------------------------------------------------
# training with the C programs' inputs (--same-init)

def make_optimizer(args, parameters):
    """torch.optim.Adam / SGD with the C constants (float32 values unless --python-constants)."""
    c = (lambda v: v) if args.python_constants else (lambda v: float(np.float32(v)))
    if args.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=c(args.learning_rate), momentum=c(0.9))
    return torch.optim.Adam(parameters, lr=c(args.learning_rate), betas=(c(0.9), c(0.999)),
                            eps=c(1e-8))


def run_same_init(rank, args, port):
    torch.set_num_threads(args.threads)
    N = args.ranks
    if N > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=N)
    x, y, n_train = c_dataset(args.data_size, args.seed)
    n_eval = args.data_size - n_train
    x, y = torch.from_numpy(x).view(-1, 1), torch.from_numpy(y).view(-1, 1)
    eval_idx = torch.arange(n_train + rank, args.data_size, N)  # lesson 02's eval split
    model = make_model(args.hidden_size)
    set_params(model, c_init_params(args.hidden_size, args.seed))
    net = DDP(model, bucket_cap_mb=args.bucket_cap_kb / 1024) if N > 1 else model
    optimizer = make_optimizer(args, net.parameters())
    loss_fn = nn.MSELoss()
    losses = []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        indices = torch.from_numpy(c_sampler_indices(n_train, N, rank, args.seed, epoch))
        batches = torch.split(indices, args.batch_size)
        total = 0.0
        # lesson 04's --accumulate: each step's micro-batches weighted by their samples, all
        # but the last under no_sync() (their gradients add up locally)
        for first in range(0, len(batches), args.accumulate):
            steps = batches[first:first + args.accumulate]
            step_samples = sum(len(b) for b in steps)
            optimizer.zero_grad()
            for i, batch in enumerate(steps):
                syncing = i == len(steps) - 1 or N == 1
                with contextlib.nullcontext() if syncing else net.no_sync():
                    loss = loss_fn(net(x[batch]), y[batch])
                    # under DDP: the gradients are averaged over the ranks in the last one
                    (loss * (len(batch) / step_samples)).backward()
                total += loss.item()
            optimizer.step()
        with torch.no_grad():
            squared = ((model(x[eval_idx]) - y[eval_idx]) ** 2).sum().item()
        # [mean batch loss of this rank, its share of the eval loss], then over the ranks
        result = torch.tensor([total / len(batches), squared / n_eval], dtype=torch.float64)
        if N > 1:
            dist.all_reduce(result)
            result[0] /= N
        train_loss, eval_loss = result.tolist()
        losses.append((train_loss, eval_loss, time.perf_counter() - start))
        if rank == 0:
            print(f"Epoch [{epoch + 1}/{args.epochs}] - Train Loss: {train_loss:.6f}, "
                  f"Eval Loss: {eval_loss:.6f}", flush=True)
    if rank == 0:
        seconds = sum(s for _, _, s in losses) / args.epochs
        print(f"RESULT impl=torch-same-init ranks={N} device=cpu seconds_per_epoch={seconds:.6f} "
              f"final_eval_loss={losses[-1][1]:.6f} torch={torch.__version__} "
              f"threads={args.threads}", flush=True)
        if args.out:
            write_losses(args.out, losses)
        if args.dump_params:
            get_params(model).astype("<f4").tofile(args.dump_params)
    if N > 1:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------
# training with torch's own data and initialisation (timing)

def run(rank, args, port):
    torch.set_num_threads(args.threads)
    distributed = args.ranks > 1
    device = torch.device(f"cuda:{rank}" if args.device == "cuda" else "cpu")
    if distributed:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo", rank=rank,
                                world_size=args.ranks)
    torch.manual_seed(args.seed)
    train_set, eval_set = make_data(args.data_size, args.seed)
    model = make_model(args.hidden_size).to(device)
    if distributed:
        model = DDP(model, device_ids=[rank] if args.device == "cuda" else None)
    sampler = DistributedSampler(train_set, num_replicas=args.ranks, rank=rank, seed=args.seed)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)
    eval_loader = DataLoader(eval_set, batch_size=args.batch_size)
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    loss_fn = nn.MSELoss()
    eval_loss = float("nan")
    start = time.perf_counter()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        total = 0.0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item()
        model.eval()
        with torch.no_grad():
            squared = sum(((model(x.to(device)) - y.to(device)) ** 2).sum().item()
                          for x, y in eval_loader)
        eval_loss = squared / len(eval_set)
        if rank == 0:
            print(f"Epoch [{epoch + 1}/{args.epochs}] - Train Loss: {total / len(train_loader):.6f}, "
                  f"Eval Loss: {eval_loss:.6f}", flush=True)
    seconds = (time.perf_counter() - start) / args.epochs
    if rank == 0:
        print(f"RESULT impl=torch ranks={args.ranks} device={args.device} "
              f"seconds_per_epoch={seconds:.6f} final_eval_loss={eval_loss:.6f} "
              f"torch={torch.__version__} threads={args.threads}", flush=True)
    if distributed:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------

def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=0.01)
    p.add_argument("--data-size", type=int, default=2000)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--same-init", action="store_true",
                   help="the C programs' data, initial weights and shuffle (see the docstring)")
    p.add_argument("--python-constants", action="store_true",
                   help="with --same-init: give the optimizer 0.9, 0.999, ... as Python floats, "
                   "not as the float32 values that C uses")
    p.add_argument("--accumulate", type=int, default=1, metavar="N",
                   help="with --same-init: N micro-batches per optimizer step, all but the last "
                   "under DDP's no_sync() (lesson 04)")
    p.add_argument("--bucket-cap-kb", type=int, default=25 * 1024, metavar="N",
                   help="with --same-init: DDP's bucket_cap_mb, in KiB (lesson 04's flag)")
    p.add_argument("--out", metavar="DIR", help="with --same-init: write DIR/losses.csv")
    p.add_argument("--dump-params", metavar="FILE",
                   help="with --same-init: write the final parameters to FILE (raw "
                   "little-endian float32 in the C layout)")
    args = p.parse_args()
    if min(args.ranks, args.epochs, args.batch_size, args.accumulate, args.bucket_cap_kb) < 1:
        p.error("--ranks, --epochs, --batch-size, --accumulate and --bucket-cap-kb must be "
                "positive")
    if not args.same_init and (args.out or args.dump_params or args.python_constants or
                               args.accumulate != 1):
        p.error("--out, --dump-params, --python-constants and --accumulate need --same-init")
    if args.same_init:
        if args.device != "cpu":
            p.error("--same-init runs on the CPU (the C programs' specification)")
        n_train = int(0.8 * args.data_size)
        per_rank = (n_train + args.ranks - 1) // args.ranks
        if n_train < 1 or args.batch_size > per_rank:
            p.error(f"--batch-size must be in [1, {per_rank}] (the {n_train} training samples "
                    f"of --data-size {args.data_size} shared by {args.ranks} ranks)")
        if not 0 <= args.seed < 2**64:
            p.error("--seed must be in [0, 2^64)")
    return args


def main():
    args = parse_args()
    target = run_same_init if args.same_init else run
    if args.ranks == 1:
        target(0, args, 0)
        return
    with socket.socket() as s:  # a free port for the process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # --same-init forks its ranks, which then need not import torch again (see the
    # docstring); the timing runs spawn theirs, as they always did.
    start_method = "fork" if args.same_init else "spawn"
    mp.start_processes(target, args=(args, port), nprocs=args.ranks, join=True,
                       start_method=start_method)


if __name__ == "__main__":
    sys.exit(main())
