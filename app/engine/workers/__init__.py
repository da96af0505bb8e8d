"""Model workers: what runs the batches the batcher plans.

`thread.py` runs them in a thread of the gateway process; `process.py` in worker processes
that own the weights, fed through `channel.py`'s binary messages; `pool.py` holds a
model's workers (one per device) over its one queue.
"""
