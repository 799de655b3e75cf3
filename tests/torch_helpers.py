"""Helpers the framework adapters' tests share (they import torch: import only after
``conftest.require("torch")``)."""

from __future__ import annotations

import torch

import popbt


def replay_with_one_thread(spec: str, member: int, runs):
    """``popbt.replay`` with the one thread per worker that ``popbt run`` gave each of its two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return popbt.replay(spec, member=member, dir=runs)
    finally:
        torch.set_num_threads(threads)
