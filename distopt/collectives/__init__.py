"""Fused collectives over a communicator: bucket plans and sliced in-place reductions."""

from distopt.collectives._bucket import BucketPlan
from distopt.collectives._reduce import DEFAULT_PIECE_BYTES, allreduce_flat, allreduce_plan

__all__ = ["BucketPlan", "DEFAULT_PIECE_BYTES", "allreduce_flat", "allreduce_plan"]
