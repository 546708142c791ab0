"""Process entry points for multi-process tests; kept light (torch and the module under test only), because
every spawned process imports this file."""

import os

import torch
import torch.distributed as dist


def two_rank_tracker(rank: int, port: int, out_dir: str) -> None:
    """Two gloo ranks update one BetaTracker replica each with different batches and save their states."""
    from recsys.modules.lifecycle import BetaTracker

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        tracker = BetaTracker(num_users=3, tasks=["ctr"])
        if rank == 0:  # ranks bring different batches (rank 1 a shorter one)
            tracker(torch.tensor([0, 1, 1]), torch.tensor([1.0, 1.0, 2.0]), torch.tensor([[0.5], [0.2], [0.6]]))
        else:
            tracker(torch.tensor([1, -1]), torch.tensor([3.0, 1.0]), torch.tensor([[1.0], [0.9]]))
        torch.save(tracker.state, os.path.join(out_dir, f"state-{rank}.pt"))
    finally:
        dist.destroy_process_group()
