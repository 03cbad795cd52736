"""Training: the loop (``loop``), one step (``step``), a run put together from params (``run``),
losses, the text head init file, and the code closure a resumed state must match."""
