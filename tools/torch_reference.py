#!/usr/bin/env python3
"""torch_reference.py - the course's workload in PyTorch, to time beside the C programs.

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
"""
import argparse
import math
import os
import socket
import sys
import time

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


def main():
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
    args = p.parse_args()
    if args.ranks < 1 or args.epochs < 1 or args.batch_size < 1:
        p.error("--ranks, --epochs and --batch-size must be positive")
    if args.ranks == 1:
        run(0, args, 0)
        return
    with socket.socket() as s:  # a free port for the process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run, args=(args, port), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    sys.exit(main())
