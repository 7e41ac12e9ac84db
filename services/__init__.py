"""The fleet's services, one package per role, each run as ``python -m services.<role>``.

Several services compute on the same CPUs at once: a denoiser and the ControlNet
beside it step together, the text encoder and VAE of the next request run
meanwhile. torch's OpenMP threads spin on their core while they wait for their
next piece of work (by default 300,000 turns), and a spinning thread holds a
core that a thread of the other process needs: two processes of two threads
each on 2 cores took 2.1 s for a UNet call that takes 13 ms alone, and a
ControlNet request through the fleet took 2.7-2.8x the time of the same
request in one diffusers process (1.7-1.85x with the brief spin below).
Threads that never spin (``OMP_WAIT_POLICY=PASSIVE``) cost a wake-up on each
of the UNet's many small operations instead: text to image took 1.9x.

So every service process spins its waiting threads briefly
(``GOMP_SPINCOUNT``, ``SPIN_TURNS``), long enough for the next operation of the
same call, short enough to give the core back between calls, unless its
environment sets ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` itself. OpenMP reads
them once, when torch loads: hence here, the first module every service
process imports. Measured in ``docs/benchmarks.md``.
"""

import os

SPIN_TURNS = 10_000

if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", str(SPIN_TURNS))
